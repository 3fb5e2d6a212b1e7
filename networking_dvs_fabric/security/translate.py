"""Neutron security group rules -> the stateless DVS filter of one port group.

Pure: no I/O.  ``policy_for_set`` makes the :class:`PortGroupPolicy` of a set of
ports with port security on; ``check_rule`` says whether one Neutron rule can be
enforced by a DVS traffic filter at all.  docs/security.md is the operator's view
of the translation; in short, with INCOMING = what the VM sends (Neutron egress) and
OUTGOING = what the VM receives (Neutron ingress):

* egress rule  -> INCOMING accept from each of the set's own addresses to the
  remote; replies OUTGOING from the remote (TCP/UDP/SCTP to ``EPHEMERAL_PORTS``).
* ingress rule -> OUTGOING accept from the remote; replies INCOMING from the set's
  own addresses to the remote, source ports = the rule's ports.
* base rules first (DHCP, ICMPv6 link-local and link-scope multicast, no DHCP
  server in the VM), a catch-all IP DROP last in each direction.

Rules the DVS cannot express (``check_rule``) are left out, so they allow nothing.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import netaddr
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc

from networking_dvs_fabric.security.model import (
    ACCEPT, DROP, INCOMING, OUTGOING, FilterRule, PortGroupPolicy, PortRange, ip_network)

# vCenter's API reference gives no limit on the rules of a traffic ruleset; a
# conservative bound keeps port group reconfigures (whole setting each time) small.
DEFAULT_MAX_RULES = 1000
# Where a stateless reply is let back in: the guest chose its source port from its
# ephemeral range (Linux 32768-60999, Windows and the IANA range 49152-65535).
EPHEMERAL_PORTS = PortRange(32768, 65535)

TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP})
ANY = {4: "0.0.0.0/0", 6: "::/0"}
LINK_LOCAL6 = "fe80::/10"
LINK_MULTICAST6 = "ff02::/16"
FULL_RANGE = PortRange(1, 65535)


class RuleNotExpressible(n_exc.InvalidInput):
    message = ("Security group rule %(rule_id)s cannot be enforced on vSphere ports: "
               "%(reason)s.")


class PolicyTooLarge(n_exc.InvalidInput):
    message = ("Security groups %(groups)s need %(count)d DVS filter rules on a vSphere "
               "port group, more than the limit of %(limit)d (option [ml2_vsphere] "
               "max_filter_rules).")


def _protocol(rule: Mapping[str, Any]) -> int | None:
    """Neutron's protocol as an IP protocol number; None for any; ValueError if unknown."""
    value = rule.get("protocol")
    if value is None or value in ("", "any"):
        return None
    text = str(value).strip().lower()
    if text.isdigit():
        number = int(text)
        if not 0 <= number <= 255:
            raise ValueError(f"protocol number {number} is out of 0-255")
    elif text in n_const.IP_PROTOCOL_MAP:
        number = n_const.IP_PROTOCOL_MAP[text]
    else:
        raise ValueError(f"unknown protocol name {value!r}")
    if number == ICMP and rule.get("ethertype") == n_const.IPv6:
        return ICMPV6   # Neutron's agents treat icmp in an IPv6 rule as ICMPv6
    return number


def _icmp(family: int) -> int:
    return ICMP if family == 4 else ICMPV6


def check_rule(rule: Mapping[str, Any]) -> str | None:
    """None if a DVS traffic filter can enforce ``rule``, else why not."""
    try:
        protocol = _protocol(rule)
    except ValueError as exc:
        return str(exc)
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if low is None and high is None:
        return None
    if protocol in (ICMP, ICMPV6):
        return (f"ICMP type {low} code {high} (port_range_min/max): the DVS traffic "
                f"filter cannot match ICMP types or codes; leave them empty to allow "
                f"all ICMP from the remote")
    if protocol not in PORT_PROTOCOLS:
        name = "any protocol" if protocol is None else f"protocol {rule.get('protocol')}"
        return (f"port range {low}-{high} with {name}: the DVS traffic filter matches "
                f"ports only for TCP, UDP and SCTP")
    return None


def _ports(rule: Mapping[str, Any]) -> PortRange | None:
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if low is None and high is None:
        return None
    ports = PortRange(int(low if low is not None else high),
                      int(high if high is not None else low))
    return None if ports.low <= 1 and ports.high == 65535 else ports


def _merged(cidrs: Iterable[str], family: int) -> list[str]:
    nets = [ip_network(c) for c in cidrs if c]
    return [str(n) for n in netaddr.cidr_merge([n for n in nets if n.version == family])]


def _remotes(rule: Mapping[str, Any], family: int, members: Mapping[str, Sequence[str]],
             address_groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The remote CIDRs of a rule; empty: a remote that names no address (no rule)."""
    if rule.get("remote_ip_prefix"):
        net = ip_network(rule["remote_ip_prefix"]).cidr
        return [str(net)] if net.version == family else []
    if rule.get("remote_group_id"):
        return _merged(members.get(rule["remote_group_id"], ()), family)
    if rule.get("remote_address_group_id"):
        return _merged(address_groups.get(rule["remote_address_group_id"], ()), family)
    return [ANY[family]]


def _egress(rule_id: str, family: int, protocol: int | None, ports: PortRange | None,
            own: list[str], remotes: list[str]) -> list[FilterRule]:
    out: list[FilterRule] = []
    text = f"egress {rule_id}"
    for remote in remotes:
        out += [FilterRule(INCOMING, ACCEPT, protocol, src, remote, destination_ports=ports,
                           description=text) for src in own]
        reply = f"reply to {text}"
        if protocol is None:
            out += [FilterRule(OUTGOING, ACCEPT, p, remote,
                               destination_ports=EPHEMERAL_PORTS, description=reply)
                    for p in (TCP, UDP)]
            out.append(FilterRule(OUTGOING, ACCEPT, _icmp(family), remote,
                                  description=reply))
        elif protocol in PORT_PROTOCOLS:
            out.append(FilterRule(OUTGOING, ACCEPT, protocol, remote, source_ports=ports,
                                  destination_ports=EPHEMERAL_PORTS, description=reply))
        else:
            out.append(FilterRule(OUTGOING, ACCEPT, protocol, remote, description=reply))
    return out


def _ingress(rule_id: str, protocol: int | None, ports: PortRange | None,
             own: list[str], remotes: list[str]) -> list[FilterRule]:
    out: list[FilterRule] = []
    text = f"ingress {rule_id}"
    for remote in remotes:
        out.append(FilterRule(OUTGOING, ACCEPT, protocol, remote, destination_ports=ports,
                              description=text))
        out += [FilterRule(INCOMING, ACCEPT, protocol, src, remote, source_ports=ports,
                           description=f"reply to {text}") for src in own]
    return out


def rule_filters(rule: Mapping[str, Any], own_addresses: Iterable[str],
                 member_addresses: Mapping[str, Sequence[str]],
                 address_groups: Mapping[str, Sequence[str]]) -> list[FilterRule]:
    """The DVS rules (accepts and their replies) of one expressible Neutron rule."""
    family = 6 if rule.get("ethertype") == n_const.IPv6 else 4
    protocol, ports = _protocol(rule), _ports(rule)
    own = _merged(own_addresses, family)
    remotes = _remotes(rule, family, member_addresses, address_groups)
    rule_id = str(rule.get("id") or "")[:8]
    if rule.get("direction") == n_const.EGRESS_DIRECTION:
        return _egress(rule_id, family, protocol, ports, own, remotes)
    return _ingress(rule_id, protocol, ports, own, remotes)


def base_rules(direction: str) -> list[FilterRule]:
    """What Neutron's agents always allow (or always refuse) in one direction, first."""
    dhcp4 = (PortRange(68, 68), PortRange(67, 67))
    dhcp6 = (PortRange(546, 546), PortRange(547, 547))
    if direction == INCOMING:
        return [
            FilterRule(INCOMING, DROP, UDP, source_ports=dhcp4[1], destination_ports=dhcp4[0],
                       description="no DHCP server"),
            FilterRule(INCOMING, DROP, UDP, source_ports=dhcp6[1], destination_ports=dhcp6[0],
                       description="no DHCPv6 server"),
            FilterRule(INCOMING, ACCEPT, UDP, source_ports=dhcp4[0],
                       destination_ports=dhcp4[1], description="DHCP client"),
            FilterRule(INCOMING, ACCEPT, UDP, source_ports=dhcp6[0],
                       destination_ports=dhcp6[1], description="DHCPv6 client"),
            FilterRule(INCOMING, ACCEPT, ICMPV6, LINK_LOCAL6, description="ICMPv6 link-local"),
            FilterRule(INCOMING, ACCEPT, ICMPV6, None, LINK_MULTICAST6,
                       description="ICMPv6 to link multicast"),
        ]
    return [
        FilterRule(OUTGOING, ACCEPT, UDP, source_ports=dhcp4[1], destination_ports=dhcp4[0],
                   description="DHCP reply"),
        FilterRule(OUTGOING, ACCEPT, UDP, source_ports=dhcp6[1], destination_ports=dhcp6[0],
                   description="DHCPv6 reply"),
        FilterRule(OUTGOING, ACCEPT, ICMPV6, LINK_LOCAL6, description="ICMPv6 link-local"),
        FilterRule(OUTGOING, ACCEPT, ICMPV6, None, LINK_MULTICAST6,
                   description="ICMPv6 to link multicast"),
    ]


def _covers_all(rule: FilterRule) -> bool:
    """An accept of any IP protocol and port to anywhere (of its source's family)."""
    return rule.action == ACCEPT and rule.protocol is None and rule.source_ports is None \
        and rule.destination_ports is None and \
        (rule.destination is None or rule.destination in ANY.values())


def _without_covered(rules: list[FilterRule]) -> list[FilterRule]:
    """Drop the accepts another accept already lets through whole.

    All the set's rules are accepts evaluated before one final drop, so an accept
    that a broader one covers changes nothing - and leaving it out keeps a group that
    admits its own members (Neutron's default group) linear in its size: the
    replies to "ingress from members" are covered by "egress anywhere" from the
    same addresses (else one rule per own address and member: n squared).
    """
    broad: dict[str, list[netaddr.IPNetwork | None]] = {}
    for rule in rules:
        if _covers_all(rule):
            broad.setdefault(rule.direction, []).append(
                None if rule.source is None else ip_network(rule.source))
    if not broad:
        return rules

    def covered(rule: FilterRule) -> bool:
        if rule.action != ACCEPT or _covers_all(rule):
            return False
        source = None if rule.source is None else ip_network(rule.source)
        family = source.version if source is not None else (
            ip_network(rule.destination).version if rule.destination else None)
        for wide in broad.get(rule.direction, ()):
            if wide is None:
                return True
            if source is not None and source.version == wide.version and source in wide:
                # "to anywhere" of that family: the rule's destination must be of it too.
                return family == wide.version
        return False
    return [r for r in rules if not covered(r)]


def _match_key(rule: FilterRule) -> tuple[Any, ...]:
    def ports(p: PortRange | None) -> tuple[int, int]:
        return (-1, -1) if p is None else (p.low, p.high)
    return (-1 if rule.protocol is None else rule.protocol, rule.source or "",
            rule.destination or "", ports(rule.source_ports), ports(rule.destination_ports),
            rule.action)


def _ordered(direction: str, rules: Iterable[FilterRule]) -> list[FilterRule]:
    """Base rules, the set's rules sorted and without duplicates, the catch-all DROP."""
    out = base_rules(direction)
    seen = {_match_key(r) for r in out}
    for rule in sorted((r for r in rules if r.direction == direction),
                       key=lambda r: (_match_key(r), r.description)):
        key = _match_key(rule)
        if key not in seen:
            seen.add(key)
            out.append(rule)
    out.append(FilterRule(direction, DROP, description="drop other IP"))
    return out


def refused_rules(rules: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(rule id, reason) of each rule ``policy_for_set`` leaves out."""
    return [(str(r.get("id")), reason) for r in rules
            if (reason := check_rule(r)) is not None]


def policy_for_set(rules: Iterable[Mapping[str, Any]], own_addresses: Iterable[str],
                   member_addresses: Mapping[str, Sequence[str]],
                   address_groups: Mapping[str, Sequence[str]], foreign_mac: bool = False,
                   max_rules: int = DEFAULT_MAX_RULES) -> PortGroupPolicy:
    """The port group policy of a set of ports with port security on.

    The same input always gives the same policy (rules sorted, duplicates dropped).
    Raises :class:`PolicyTooLarge` when the filter would hold more than ``max_rules``.
    """
    rules = list(rules)
    own = list(own_addresses)
    filters: list[FilterRule] = []
    for rule in rules:
        if check_rule(rule) is None:
            filters += rule_filters(rule, own, member_addresses, address_groups)
    filters = _without_covered(filters)
    ordered = _ordered(INCOMING, filters) + _ordered(OUTGOING, filters)
    if len(ordered) > max_rules:
        groups = ", ".join(sorted({str(r.get("security_group_id")) for r in rules})) or "-"
        raise PolicyTooLarge(groups=groups, count=len(ordered), limit=max_rules)
    return PortGroupPolicy(filtered=True, rules=tuple(ordered), forged_transmits=foreign_mac,
                           mac_changes=foreign_mac, allow_promiscuous=False, blocked=False)


def not_expressible(rule: Mapping[str, Any]) -> RuleNotExpressible | None:
    """The exception for the API to raise for ``rule``, or None if it can be enforced."""
    reason = check_rule(rule)
    if reason is None:
        return None
    return RuleNotExpressible(rule_id=rule.get("id") or "(new)", reason=reason)
