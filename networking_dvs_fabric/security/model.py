"""What a port group's filter and security policy hold, in the DVS's own terms.

The project enforces Neutron's security groups, port security, allowed address
pairs and admin state on vSphere ports through the port group each port's NIC sits
on: one port group per (network, DVS, *set*), a set being the port's security
groups with port security on, ``open`` (port security off) or ``blocked``
(``admin_state_up`` false).  A :class:`PortGroupPolicy` is everything the
project writes into such a port group besides its VLAN; ``security/translate.py``
makes it from Neutron's rules, ``security/vim_spec.py`` turns it into vCenter's
``DvsFilterPolicy``/``securityPolicy``/``blocked`` and back (the lab's dataplane
enforces what it reads back from vCenter, never what Neutron says).

Directions are the DVS's, seen from the switch port: ``INCOMING`` are the frames
the VM sends into the switch (Neutron's *egress*), ``OUTGOING`` the frames the
switch delivers to the VM (Neutron's *ingress*).  Rules are evaluated in order,
first match wins, and are stateless.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable

import netaddr

INCOMING = "incomingPackets"    # VM -> switch: Neutron's egress
OUTGOING = "outgoingPackets"    # switch -> VM: Neutron's ingress
ACCEPT = "accept"
DROP = "drop"

# Set keys: what a port's port group is chosen by (``set_key``).
OPEN = "open"           # port security off: no filter, forged transmits allowed
BLOCKED = "blocked"     # admin_state_up false: the port group is blocked


def ip_network(text: str) -> netaddr.IPNetwork:
    """``text`` (an address or a CIDR) as a network, its IP version told to netaddr.

    Left to guess, netaddr tries IPv4 first and, for an IPv6 text, keeps the failed
    attempt's exception in a reference cycle with its frames - and through them
    every caller's locals: reading one port group's filter pinned its whole parsed
    configuration until a collection found it (and a port-group audit reads
    thousands of filters)."""
    return netaddr.IPNetwork(text, version=6 if ":" in text else 4)


@dataclasses.dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 65535:
            raise ValueError(f"bad port range {self.low}-{self.high}")


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """One DVS traffic rule: one IP qualifier (at most), one action.

    ``source``/``destination`` are CIDRs (a single address is a /32 or /128);
    None is "any IP address" (of either family).  ``protocol`` is an IP protocol
    number, None for any.  Ports only with TCP (6), UDP (17) or SCTP (132).
    """
    direction: str
    action: str
    protocol: int | None = None
    source: str | None = None
    destination: str | None = None
    source_ports: PortRange | None = None
    destination_ports: PortRange | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (INCOMING, OUTGOING):
            raise ValueError(f"bad direction {self.direction!r}")
        if self.action not in (ACCEPT, DROP):
            raise ValueError(f"bad action {self.action!r}")

    def same_match(self, other: "FilterRule") -> bool:
        """Equal but for the description (what vCenter keeps is compared so)."""
        return dataclasses.replace(self, description="") == \
            dataclasses.replace(other, description="")


@dataclasses.dataclass(frozen=True)
class PortGroupPolicy:
    """A port group's filter, security policy and blocked flag, as the project wants them.

    ``filtered`` False: no traffic filter at all (``rules`` empty).  A blocked port
    group passes nothing whatever its rules.
    """
    filtered: bool
    rules: tuple[FilterRule, ...] = ()
    forged_transmits: bool = True
    mac_changes: bool = True
    allow_promiscuous: bool = False
    blocked: bool = False

    def same_as(self, other: "PortGroupPolicy") -> bool:
        """Do both enforce the same (rule descriptions aside)?"""
        if (self.filtered, self.forged_transmits, self.mac_changes, self.allow_promiscuous,
                self.blocked) != (other.filtered, other.forged_transmits, other.mac_changes,
                                  other.allow_promiscuous, other.blocked):
            return False
        return len(self.rules) == len(other.rules) and \
            all(a.same_match(b) for a, b in zip(self.rules, other.rules))


OPEN_POLICY = PortGroupPolicy(filtered=False)
BLOCKED_POLICY = PortGroupPolicy(filtered=False, forged_transmits=False, mac_changes=False,
                                 blocked=True)


def fingerprint(policy: PortGroupPolicy) -> str:
    """A short digest of what ``policy`` enforces (rule descriptions aside).

    Written into the port group's marker with the policy, so the policy worker can
    tell from a port group's name and description alone (the light read, or the
    watched cache) whether its filter is the one it wants; a hand edit in vCenter
    leaves it stale, which the audit's full comparison finds (``filter_drift``).
    """
    rules = ";".join(
        f"{r.direction},{r.action},{r.protocol},{r.source},{r.destination},"
        f"{r.source_ports},{r.destination_ports}" for r in policy.rules)
    flags = (policy.filtered, policy.forged_transmits, policy.mac_changes,
             policy.allow_promiscuous, policy.blocked)
    return hashlib.sha1(f"{flags}|{rules}".encode()).hexdigest()[:12]


def set_key(port_security: bool, security_group_ids: Iterable[str],
            admin_state_up: bool = True) -> str:
    """The key of a port's set: which of its network's port groups the port sits on."""
    if not admin_state_up:
        return BLOCKED
    if not port_security:
        return OPEN
    ids = ",".join(sorted({str(i).lower() for i in security_group_ids}))
    return "sg-" + hashlib.sha1(ids.encode()).hexdigest()[:10]
