"""What ESXi's host switch enforces on a VM's port, as OpenFlow flows on the lab's host bridge.

The dataplane agent reads a port group's ``PortGroupPolicy`` back from vCenter and
this module turns it, with the NIC's MAC, its link (the VM's OVS port on its host's
bridge) and the port group's VLAN, into stateless flows installed with ``ovs-ofctl``.

Tables of a host bridge ``esx-<host>``:

- table 0, frames entering the bridge.  The uplink's frames (tagged) go on with
  their VLAN in ``reg0``.  A VM link's frames: ``blocked`` drops all; with
  ``forgedTransmits`` or ``macChanges`` off a frame whose source MAC is not the
  vNIC's is dropped; then the port group's ``INCOMING`` rules in order (first match
  wins: accept -> table 1 with the link's VLAN in ``reg0``, drop -> dropped); what
  no rule matches (ARP, any non-IP frame, unmatched IP) goes on to table 1.  Any
  other port (a link whose flows are not there yet) is dropped: fail closed.
- table 1, delivery.  A frame to a VM's MAC on its VLAN (``reg0``): ``blocked`` drops
  it, then the ``OUTGOING`` rules in order (accept -> ``NORMAL``, drop -> dropped);
  everything else is switched ``NORMAL`` (VLAN tagging, learning, flooding).

Broadcast and multicast frames are flooded by ``NORMAL`` without the receivers'
``OUTGOING`` rules: ARP (and IPv6 neighbour discovery) reaches every VM of the
VLAN, and so does IP broadcast/multicast - filtering floods per receiving port would
mean replacing ``NORMAL``'s flooding with per-port output.  A blocked link is taken
out of flooding too (the port's ``no-flood`` bit), so it receives nothing at all.
``allowPromiscuous`` is not emulated (``NORMAL`` never delivers another port's
unicast anyway).

Each link's flows carry a cookie of their own (``link_cookie``) and are replaced in
one OpenFlow bundle (delete by cookie + add), applied atomically by the switch.  They
name the link by the OpenFlow port number the agent gives it (``ofport_request``),
so a plug or a vMotion switchover puts them in before the link is on the bridge.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from pathlib import Path
from typing import Iterable, Protocol

from networking_dvs_fabric.security.model import (ACCEPT, INCOMING, OUTGOING, FilterRule,
                                                  PortGroupPolicy, PortRange)

BASE_COOKIE = 0x1                # the bridge's own flows (uplink, defaults)
LINK_COOKIE_PREFIX = 0xD5 << 56  # a link's flows: prefix + 56 bits of its name's hash
ALL_BITS = 0xFFFFFFFFFFFFFFFF
BLOCKED_PRIORITY = 40000
RULE_TOP = 30000                 # rule i gets RULE_TOP - i
MAX_RULES = RULE_TOP - 1000
PASS_PRIORITY = 20               # a link's frames no rule took
SPOOF_PRIORITY = 10              # a link's frames from another source MAC
UPLINK_PRIORITY = 10
PORT_PROTOCOLS = (6, 17, 132)    # TCP, UDP, SCTP: the protocols with ports
IP_TYPES = {4: "0x0800", 6: "0x86dd"}
OPENFLOW = "OpenFlow14"          # bundles need OpenFlow 1.4


class FilterError(ValueError):
    """A rule this emulation cannot express (the DVS would not accept it either)."""


@dataclasses.dataclass(frozen=True)
class PortFilter:
    """One NIC's port: where it is plugged and what vCenter says of its port group."""
    link: str                    # OVS port name on the host bridge
    mac: str
    vlan: int
    policy: PortGroupPolicy
    # The link's OpenFlow port number, when chosen ahead (``ofport_request``): its
    # flows can then be in place before the port is on the bridge.  None: by name.
    ofport: int | None = None

    @property
    def in_port(self) -> str:
        return f"in_port={self.ofport if self.ofport is not None else self.link}"


class OfctlRunner(Protocol):
    """``Dataplane``: runs ``ovs-ofctl [-O protocol] command <bridge's socket> args``."""

    def ofctl(self, command: str, bridge: str, *args: str,
              protocol: str | None = None) -> str: ...


# -- pure: matches and flows ------------------------------------------------------------
def port_masks(low: int, high: int, bits: int = 16) -> list[tuple[int, int]]:
    """(value, mask) pairs covering exactly ``low..high`` (a mask 0 means any port)."""
    if not 0 <= low <= high < (1 << bits):
        raise FilterError(f"bad port range {low}-{high}")
    full = (1 << bits) - 1
    out = []
    while low <= high:
        size = low & -low if low else 1 << bits
        while size > high - low + 1:
            size >>= 1
        out.append((low, full & ~(size - 1)))
        low += size
    return out


def _port_fields(name: str, ports: PortRange | None) -> list[str]:
    if ports is None:
        return [""]
    out = []
    for value, mask in port_masks(ports.low, ports.high):
        if mask == 0:
            out.append("")
        elif mask == 0xFFFF:
            out.append(f",{name}={value}")
        else:
            out.append(f",{name}={value:#x}/{mask:#x}")
    return out


def _address(field4: str, field6: str, cidr: str | None,
             family: int | None) -> tuple[str, int | None]:
    """(match text, family) of a CIDR; FilterError when it clashes with ``family``."""
    if cidr is None:
        return "", family
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise FilterError(f"bad address {cidr!r}: {exc}") from exc
    if family is not None and net.version != family:
        raise FilterError(f"rule mixes IPv{family} and IPv{net.version} addresses")
    field = field4 if net.version == 4 else field6
    if net.prefixlen == net.max_prefixlen:
        return f",{field}={net.network_address}", net.version
    return f",{field}={net.with_prefixlen}", net.version


def rule_matches(rule: FilterRule) -> list[str]:
    """The OpenFlow match texts (``dl_type=...``) that together match what ``rule`` does.

    A rule without addresses matches IP of either family; ports are matched with
    masks (a range may take several flows); ports without a protocol mean TCP, UDP
    and SCTP.
    """
    source, family = _address("nw_src", "ipv6_src", rule.source, None)
    destination, family = _address("nw_dst", "ipv6_dst", rule.destination, family)
    families = (family,) if family else (4, 6)
    has_ports = rule.source_ports is not None or rule.destination_ports is not None
    if rule.protocol is None:
        protocols: tuple[int | None, ...] = PORT_PROTOCOLS if has_ports else (None,)
    elif has_ports and rule.protocol not in PORT_PROTOCOLS:
        raise FilterError(f"ports with IP protocol {rule.protocol} (only TCP, UDP, SCTP)")
    else:
        protocols = (rule.protocol,)
    if rule.protocol is not None and not 0 <= rule.protocol <= 255:
        raise FilterError(f"bad IP protocol {rule.protocol}")
    out = []
    for fam in families:
        for proto in protocols:
            head = f"dl_type={IP_TYPES[fam]}" + (f",nw_proto={proto}" if proto is not None
                                                  else "")
            for src_port in _port_fields("tp_src", rule.source_ports):
                for dst_port in _port_fields("tp_dst", rule.destination_ports):
                    out.append(head + source + destination + src_port + dst_port)
    return out


def link_cookie(link: str) -> int:
    return LINK_COOKIE_PREFIX | int(hashlib.sha1(link.encode()).hexdigest()[:14], 16)


def spoof_check(policy: PortGroupPolicy) -> bool:
    """Must the VM's frames carry its vNIC's MAC as source?"""
    return not (policy.forged_transmits and policy.mac_changes)


def link_flows(port: PortFilter) -> list[str]:
    """Every flow of one link (``table=...,cookie=...,priority=...,match,actions=...``)."""
    policy, mac, vlan = port.policy, port.mac.lower(), int(port.vlan)
    head = f"cookie={link_cookie(port.link):#x}"
    from_vm = port.in_port
    to_vm = f"reg0={vlan},dl_dst={mac}"
    if policy.blocked:
        return [f"table=0,{head},priority={BLOCKED_PRIORITY},{from_vm},actions=drop",
                f"table=1,{head},priority={BLOCKED_PRIORITY},{to_vm},actions=drop"]
    if spoof_check(policy):
        from_vm += f",dl_src={mac}"
    accept_in = f"load:{vlan}->NXM_NX_REG0[0..11],resubmit(,1)"
    rules = policy.rules if policy.filtered else ()
    if len(rules) > MAX_RULES:
        raise FilterError(f"{len(rules)} rules: at most {MAX_RULES}")
    flows = []
    for index, rule in enumerate(rules):
        priority = RULE_TOP - index
        if rule.direction == INCOMING:
            table, match, accept = 0, from_vm, accept_in
        else:
            table, match, accept = 1, to_vm, "NORMAL"
        action = accept if rule.action == ACCEPT else "drop"
        flows += [f"table={table},{head},priority={priority},{match},{qualifier},"
                  f"actions={action}" for qualifier in rule_matches(rule)]
    flows.append(f"table=0,{head},priority={PASS_PRIORITY},{from_vm},actions={accept_in}")
    if spoof_check(policy):
        flows.append(f"table=0,{head},priority={SPOOF_PRIORITY},{port.in_port},"
                     "actions=drop")
    return flows


def bridge_flows(uplinks: Iterable[str]) -> list[str]:
    """A host bridge's own flows: uplink frames on with their VLAN; the rest fail closed."""
    head = f"cookie={BASE_COOKIE:#x}"
    flows = [f"table=0,{head},priority=0,actions=drop",
             f"table=1,{head},priority=0,actions=NORMAL"]
    flows += [f"table=0,{head},priority={UPLINK_PRIORITY},in_port={uplink},"
              "actions=move:NXM_OF_VLAN_TCI[0..11]->NXM_NX_REG0[0..11],resubmit(,1)"
              for uplink in uplinks]
    return flows


def bundle(flows: Iterable[str], cookie: int | None) -> str:
    """``ovs-ofctl bundle`` input: delete the cookie's flows (all, if None), add ``flows``."""
    delete = "flow delete" if cookie is None else \
        f"flow delete cookie={cookie:#x}/{ALL_BITS:#x}"
    return "\n".join([delete] + [f"flow add {flow}" for flow in flows]) + "\n"


def summary(policy: PortGroupPolicy) -> str:
    """One line of what a policy enforces, for the agent's log."""
    if policy.blocked:
        return "blocked"
    rules = policy.rules if policy.filtered else ()
    incoming = sum(1 for r in rules if r.direction == INCOMING)
    outgoing = sum(1 for r in rules if r.direction == OUTGOING)
    text = f"{incoming} in/{outgoing} out rules" if policy.filtered else "no filter"
    return text + (", source MAC checked" if spoof_check(policy) else ", any source MAC")


# -- installing ---------------------------------------------------------------------------
def _apply(runner: OfctlRunner, bridge: str, text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    runner.ofctl("bundle", bridge, str(path), protocol=OPENFLOW)


def reset_bridge(runner: OfctlRunner, bridge: str, uplinks: Iterable[str],
                 workdir: Path) -> None:
    """Every flow of ``bridge`` replaced by its own (no link's flows left)."""
    _apply(runner, bridge, bundle(bridge_flows(uplinks), None),
           workdir / f"{bridge}.flows")


def install(runner: OfctlRunner, bridge: str, port: PortFilter, workdir: Path,
            was_blocked: bool = False, attached: bool = True) -> int:
    """Replace the link's flows on ``bridge`` by ``port``'s, in one bundle; flow count.

    A blocked link leaves flooding first; an unblocked one comes back to it last, so
    no frame reaches it before its flows say so.  ``attached`` False: the port is not
    on the bridge yet (``port.ofport`` names it); call ``set_flooding`` once it is.
    """
    flows = link_flows(port)
    if attached and port.policy.blocked:
        set_flooding(runner, bridge, port.link, False)
    _apply(runner, bridge, bundle(flows, link_cookie(port.link)),
           workdir / f"{port.link}.flows")
    if attached and was_blocked and not port.policy.blocked:
        set_flooding(runner, bridge, port.link, True)
    return len(flows)


def set_flooding(runner: OfctlRunner, bridge: str, link: str, on: bool) -> None:
    """Does ``NORMAL`` flood to the link (broadcast, multicast, unknown unicast)?"""
    runner.ofctl("mod-port", bridge, link, "flood" if on else "no-flood")


def remove(runner: OfctlRunner, bridge: str, link: str) -> None:
    """The link's flows off ``bridge`` (flows name ports by number: a later port would
    inherit them)."""
    runner.ofctl("del-flows", bridge, f"cookie={link_cookie(link):#x}/{ALL_BITS:#x}")
