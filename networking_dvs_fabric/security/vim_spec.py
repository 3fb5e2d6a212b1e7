"""A :class:`PortGroupPolicy` in vCenter's terms and back.

``port_setting`` builds the whole ``VMwareDVSPortSetting`` the project sends as a port
group's ``defaultPortConfig`` (the VLAN included: a reconfigure replaces the setting,
and on the simulator anything not sent is gone).  ``policy_from_setting`` reads what
vCenter returns into a policy to compare with ``PortGroupPolicy.same_as``; anything
the project never writes (a MAC or system-traffic qualifier, a punt or rate-limit
action, a negated address, another filter agent...) becomes a *foreign* rule, a
DROP whose match no translated policy can contain, so a comparison with what the
project wants is always False and the worker rewrites the port group.

Filter off (``policy.filtered`` False) is written as the generic filter with a
*disabled* empty ruleset, not as an empty ``filterConfig``: an empty array does not
exist on the wire (SOAP leaves it out), and vCenter reads an absent property of a
reconfigure as "keep what is there", so a hand-added filter would stay.
"""
from __future__ import annotations

from typing import Any

import netaddr
from pyVmomi import vim

from networking_dvs_fabric.security.model import (
    ACCEPT, DROP, INCOMING, OUTGOING, FilterRule, PortGroupPolicy, PortRange, ip_network)

FILTER_AGENT = "dvfilter-generic-vmware"
SEQUENCE_STEP = 10
PORT_PROTOCOLS = frozenset({6, 17, 132})

_VDS = vim.dvs.VmwareDistributedVirtualSwitch
_PORT = vim.dvs.DistributedVirtualPort
_RULE = vim.dvs.TrafficRule
# The types read back, bound once (an attribute of pyVmomi's lazy modules is a lookup).
_VLAN_ID, _SINGLE_IP, _IP_RANGE = _VDS.VlanIdSpec, vim.SingleIp, vim.IpRange
_SINGLE_PORT, _PORT_RANGE, _IP_QUALIFIER = (_RULE.SingleIpPort, _RULE.IpPortRange,
                                            _RULE.IpQualifier)
_ACCEPT, _DROP, _TRAFFIC_FILTER = (_RULE.AcceptAction, _RULE.DropAction,
                                   _PORT.TrafficFilterConfig)
# A match no translated rule has: ports without a protocol (translate never writes that).
_FOREIGN_PORTS = PortRange(0, 0)


def _bool(value: bool) -> Any:
    return vim.BoolPolicy(inherited=False, value=value)


def _address(cidr: str) -> Any:
    net = ip_network(cidr)
    if net.prefixlen == (32 if net.version == 4 else 128):
        return vim.SingleIp(address=str(net.ip))
    return vim.IpRange(addressPrefix=str(net.network), prefixLength=net.prefixlen)


def _ports(ports: PortRange) -> Any:
    if ports.low == ports.high:
        return _RULE.SingleIpPort(portNumber=ports.low)
    return _RULE.IpPortRange(startPortNumber=ports.low, endPortNumber=ports.high)


def _traffic_rule(rule: FilterRule, sequence: int) -> Any:
    qualifier = _RULE.IpQualifier()
    if rule.protocol is not None:
        qualifier.protocol = vim.IntExpression(value=rule.protocol)
    if rule.source is not None:
        qualifier.sourceAddress = _address(rule.source)
    if rule.destination is not None:
        qualifier.destinationAddress = _address(rule.destination)
    if rule.source_ports is not None:
        qualifier.sourceIpPort = _ports(rule.source_ports)
    if rule.destination_ports is not None:
        qualifier.destinationIpPort = _ports(rule.destination_ports)
    action = _RULE.AcceptAction() if rule.action == ACCEPT else _RULE.DropAction()
    return vim.dvs.TrafficRule(description=rule.description or None, sequence=sequence,
                               direction=rule.direction, action=action,
                               qualifier=[qualifier])


def filter_policy(policy: PortGroupPolicy) -> Any:
    """The ``DvsFilterPolicy`` of a policy: one generic filter, its ruleset on or off."""
    ruleset = vim.dvs.TrafficRuleset(enabled=policy.filtered)
    if policy.filtered:
        ruleset.rules = [_traffic_rule(rule, SEQUENCE_STEP * (i + 1))
                         for i, rule in enumerate(policy.rules)]
    config = _PORT.TrafficFilterConfig(inherited=False, agentName=FILTER_AGENT,
                                       trafficRuleset=ruleset)
    return _PORT.FilterPolicy(inherited=False, filterConfig=[config])


def port_setting(policy: PortGroupPolicy, vlan: int) -> Any:
    """The whole ``defaultPortConfig`` for a port group with this policy on this VLAN."""
    return _VDS.VmwarePortConfigPolicy(
        vlan=_VDS.VlanIdSpec(inherited=False, vlanId=vlan),
        securityPolicy=_VDS.SecurityPolicy(
            inherited=False, allowPromiscuous=_bool(policy.allow_promiscuous),
            macChanges=_bool(policy.mac_changes),
            forgedTransmits=_bool(policy.forged_transmits)),
        blocked=_bool(policy.blocked),
        filterPolicy=filter_policy(policy))


def is_a(value: Any, vim_type: type) -> bool:
    """``isinstance`` for pyVmomi's objects and for values read raw (``vcenter/raw_soap.Xml``:
    their ``wsdl_name`` is the ``xsi:type`` vCenter sent)."""
    return isinstance(value, vim_type) or \
        getattr(value, "wsdl_name", None) == getattr(vim_type, "_wsdlName", "")


def kind_of(value: Any) -> str:
    """What to call a value's type in a foreign rule's description."""
    return (getattr(value, "wsdl_name", None) or getattr(type(value), "_wsdlName", None)
            or type(value).__name__)


def vlan_from_setting(setting: Any) -> int | None:
    """The VLAN of a ``defaultPortConfig``; None for none, a trunk or a private VLAN."""
    spec = getattr(setting, "vlan", None)
    if is_a(spec, _VLAN_ID) and spec.vlanId is not None:
        return int(spec.vlanId)
    return None


def _bool_value(policy: Any, default: bool) -> bool:
    value = getattr(policy, "value", None)
    return default if value is None else bool(value)


def _foreign(direction: str, what: str) -> FilterRule:
    return FilterRule(direction=direction, action=DROP, source_ports=_FOREIGN_PORTS,
                      destination_ports=_FOREIGN_PORTS, description=f"unknown {what}")


def _read_address(address: Any) -> str | None:
    if address is None:
        return None
    if getattr(address, "negate", False):
        raise ValueError("negated address")
    if is_a(address, _SINGLE_IP):
        return str(ip_network(address.address).cidr)
    if is_a(address, _IP_RANGE):
        # A length of 0 (0.0.0.0/0, ::/0) comes back absent from the simulator.
        length = address.prefixLength or 0
        return str(ip_network(f"{address.addressPrefix}/{length}").cidr)
    raise ValueError(kind_of(address))


def _read_ports(port: Any) -> PortRange | None:
    if port is None:
        return None
    if getattr(port, "negate", False):
        raise ValueError("negated port")
    if is_a(port, _SINGLE_PORT):
        return PortRange(port.portNumber, port.portNumber)
    if is_a(port, _PORT_RANGE):
        return PortRange(port.startPortNumber, port.endPortNumber)
    raise ValueError(kind_of(port))


def _read_protocol(expression: Any) -> int | None:
    if expression is None:
        return None
    if getattr(expression, "negate", False) or expression.value is None:
        raise ValueError("negated protocol")
    return int(expression.value)


def _read_rule(rule: Any) -> FilterRule:
    direction = rule.direction
    if direction not in (INCOMING, OUTGOING):
        return _foreign(INCOMING, f"direction {direction}")
    if is_a(rule.action, _ACCEPT):
        action = ACCEPT
    elif is_a(rule.action, _DROP):
        action = DROP
    else:
        return _foreign(direction, f"action {kind_of(rule.action)}")
    qualifiers = list(rule.qualifier or [])
    if len(qualifiers) != 1 or not is_a(qualifiers[0], _IP_QUALIFIER):
        return _foreign(direction, "qualifier " + ",".join(
            kind_of(q) for q in qualifiers))
    qualifier = qualifiers[0]
    if qualifier.tcpFlags is not None:
        return _foreign(direction, "qualifier tcpFlags")
    try:
        return FilterRule(
            direction=direction, action=action,
            protocol=_read_protocol(qualifier.protocol),
            source=_read_address(qualifier.sourceAddress),
            destination=_read_address(qualifier.destinationAddress),
            source_ports=_read_ports(qualifier.sourceIpPort),
            destination_ports=_read_ports(qualifier.destinationIpPort),
            description=rule.description or "")
    except (ValueError, TypeError, netaddr.AddrFormatError) as exc:
        return _foreign(direction, f"match ({exc})")


def _rules_from_filter(policy: Any) -> tuple[bool, tuple[FilterRule, ...]]:
    """(filtered, rules) of a ``DvsFilterPolicy`` as vCenter returns it."""
    configs = list(getattr(policy, "filterConfig", None) or [])
    rules: list[FilterRule] = []
    filtered = False
    for config in configs:
        ruleset = getattr(config, "trafficRuleset", None)
        if getattr(config, "agentName", None) != FILTER_AGENT or \
                not is_a(config, _TRAFFIC_FILTER):
            filtered = True
            rules.append(_foreign(INCOMING, f"filter {getattr(config, 'agentName', None)}"))
            continue
        if ruleset is None or not ruleset.enabled:
            continue
        filtered = True
        ordered = sorted(ruleset.rules or [], key=lambda r: (r.sequence is None,
                                                             r.sequence or 0))
        rules.extend(_read_rule(rule) for rule in ordered)
    return filtered, tuple(rules)


def policy_from_setting(setting: Any) -> PortGroupPolicy:
    """The policy a ``defaultPortConfig`` enforces, as far as the project can tell.

    Absent security settings read as vCenter's defaults for a new port group
    (forged transmits and MAC changes allowed, promiscuous mode and blocking off).
    """
    security = getattr(setting, "securityPolicy", None)
    filtered, rules = _rules_from_filter(getattr(setting, "filterPolicy", None))
    return PortGroupPolicy(
        filtered=filtered, rules=rules,
        forged_transmits=_bool_value(getattr(security, "forgedTransmits", None), True),
        mac_changes=_bool_value(getattr(security, "macChanges", None), True),
        allow_promiscuous=_bool_value(getattr(security, "allowPromiscuous", None), False),
        blocked=_bool_value(getattr(setting, "blocked", None), False))
