"""Who is in which set, and what a set's port group must know: asked of Neutron's database.

A port's set (``model.set_key``) comes from its security groups, port security and
admin state.  A set's port group on a network needs the rules of the set's groups,
the addresses of the set's ports on that network (the anti-spoofing sources), the
addresses of the members of every remote group its rules name and of every address
group they name.  Plain reads, a handful of queries per set whatever its size.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Collection, Iterable

from neutron.db import models_v2
from neutron.db.models import address_group as ag_models
from neutron.db.models import allowed_address_pair as aap_models
from neutron.db.models import securitygroup as sg_models
from neutron.db.port_security import models as psec_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names
from networking_dvs_fabric.security import model

#: The key of ``vif_details`` where vsphere_dvs writes the set of the port group it
#: answered (Nova reads only its own keys): a port's NIC sits there until it is moved.
VIF_DETAILS_SET = "dvs_port_group_set"


@dataclasses.dataclass(frozen=True)
class PortSet:
    port_id: str
    network_id: str
    mac: str
    key: str
    security_group_ids: tuple[str, ...]
    port_security: bool
    admin_state_up: bool


@dataclasses.dataclass(frozen=True)
class SetInputs:
    """What ``translate.policy_for_set`` needs for one set's port group on one network."""
    security_group_ids: tuple[str, ...]
    rules: list[dict]
    own_addresses: list[str]
    member_addresses: dict[str, list[str]]
    address_groups: dict[str, list[str]]
    foreign_mac: bool


def key_of_port(port: dict) -> str:
    """The set of a port as the API shows it (``context.current``)."""
    return model.set_key(port.get("port_security_enabled", True) is not False,
                         port.get("security_groups") or (),
                         port.get("admin_state_up", True) is not False)


def port_sets(context, network_id: str | None = None, hosts: Collection[str] | None = None,
              port_ids: Collection[str] | None = None,
              network_ids: Collection[str] | None = None) -> dict[str, PortSet]:
    """The set of each port of the network (``network_ids``: of those networks; on
    ``hosts``: with a binding there), in three queries however many ports."""
    if network_ids is not None and not network_ids:
        return {}
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        query = session.query(models_v2.Port.id, models_v2.Port.network_id,
                              models_v2.Port.mac_address, models_v2.Port.admin_state_up)
        if network_id is not None:
            query = query.filter(models_v2.Port.network_id == network_id)
        if network_ids is not None:
            query = query.filter(models_v2.Port.network_id.in_(sorted(network_ids)))
        if port_ids is not None:
            query = query.filter(models_v2.Port.id.in_(list(port_ids)))
        if hosts is not None:
            if not hosts:
                return {}
            query = query.join(ml2_models.PortBinding,
                               ml2_models.PortBinding.port_id == models_v2.Port.id).filter(
                ml2_models.PortBinding.host.in_(list(hosts))).distinct()
        ports = {row[0]: row for row in query.all()}
        if not ports:
            return {}
        ids = list(ports)
        security = dict(session.query(psec_models.PortSecurityBinding.port_id,
                                      psec_models.PortSecurityBinding.port_security_enabled)
                        .filter(psec_models.PortSecurityBinding.port_id.in_(ids)).all())
        groups: dict[str, set[str]] = {}
        for port_id, group in session.query(
                sg_models.SecurityGroupPortBinding.port_id,
                sg_models.SecurityGroupPortBinding.security_group_id).filter(
                sg_models.SecurityGroupPortBinding.port_id.in_(ids)).all():
            groups.setdefault(port_id, set()).add(group)
    found = {}
    for port_id, (_, net, mac, admin_up) in ports.items():
        secure = security.get(port_id, True) is not False
        sg_ids = tuple(sorted(groups.get(port_id, ())))
        found[port_id] = PortSet(port_id, net, mac, model.set_key(secure, sg_ids, admin_up),
                                 sg_ids, secure, bool(admin_up))
    return found


@dataclasses.dataclass(frozen=True)
class Addresses:
    """Ports' anti-spoofing sources: fixed IPs and allowed-address-pair IPs per port,
    and the ports with an allowed address pair whose MAC is not the port's."""
    by_port: dict[str, list[str]]
    foreign_mac: frozenset[str]

    def of(self, port_ids: Iterable[str]) -> list[str]:
        """Every address of these ports, sorted, once each."""
        return sorted({a for p in port_ids for a in self.by_port.get(p, ())})


def addresses(context, port_ids: Iterable[str]) -> Addresses:
    """The addresses of many ports at once, in two queries however many ports (the
    sets' own addresses, remote groups' members, the audit's every set)."""
    ids = sorted(set(port_ids))
    found: dict[str, list[str]] = {}
    if not ids:
        return Addresses(found, frozenset())
    pair = aap_models.AllowedAddressPair
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        for port_id, address in session.query(models_v2.IPAllocation.port_id,
                                              models_v2.IPAllocation.ip_address).filter(
                models_v2.IPAllocation.port_id.in_(ids)).all():
            found.setdefault(port_id, []).append(str(address))
        pairs = session.query(pair.port_id, pair.ip_address, pair.mac_address,
                              models_v2.Port.mac_address).join(
            models_v2.Port, models_v2.Port.id == pair.port_id).filter(
            pair.port_id.in_(ids)).all()
    foreign = set()
    for port_id, address, pair_mac, mac in pairs:
        found.setdefault(port_id, []).append(str(address))
        if pair_mac and str(pair_mac).lower() != str(mac or "").lower():
            foreign.add(port_id)
    return Addresses(found, frozenset(foreign))


def _rule_dict(rule) -> dict:
    return {"id": rule.id, "security_group_id": rule.security_group_id,
            "direction": rule.direction, "ethertype": rule.ethertype,
            "protocol": rule.protocol, "port_range_min": rule.port_range_min,
            "port_range_max": rule.port_range_max, "remote_ip_prefix": rule.remote_ip_prefix,
            "remote_group_id": rule.remote_group_id,
            "remote_address_group_id": rule.remote_address_group_id}


def rules_of(context, security_group_ids: Collection[str]) -> list[dict]:
    if not security_group_ids:
        return []
    with db_api.CONTEXT_READER.using(context):
        rows = context.session.query(sg_models.SecurityGroupRule).filter(
            sg_models.SecurityGroupRule.security_group_id.in_(list(security_group_ids))).all()
        return sorted((_rule_dict(r) for r in rows), key=lambda r: r["id"])


def members_addresses(context, security_group_ids: Collection[str]) -> dict[str, list[str]]:
    """Every member port's addresses (any network), per security group, sorted.

    Two joined queries, whatever the members: only ports that have an address come
    back.  (Listing the members first and then asking for their addresses sent
    every member's id twice: a port group made in a project of 4,000 ports, all in
    Neutron's default group, built and sent two statements of 4,000 parameters for
    ports without a single address.)"""
    found: dict[str, set[str]] = {g: set() for g in security_group_ids}
    if not found:
        return {}
    binding = sg_models.SecurityGroupPortBinding
    fixed = models_v2.IPAllocation
    pair = aap_models.AllowedAddressPair
    groups = list(found)
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        rows = session.query(binding.security_group_id, fixed.ip_address).join(
            fixed, fixed.port_id == binding.port_id).filter(
            binding.security_group_id.in_(groups)).all()
        rows += session.query(binding.security_group_id, pair.ip_address).join(
            pair, pair.port_id == binding.port_id).filter(
            binding.security_group_id.in_(groups)).all()
    for group, address in rows:
        found[group].add(str(address))
    return {group: sorted(addresses) for group, addresses in found.items()}


def address_groups(context, group_ids: Collection[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {g: [] for g in group_ids}
    if not found:
        return found
    with db_api.CONTEXT_READER.using(context):
        for address, group in context.session.query(
                ag_models.AddressAssociation.address,
                ag_models.AddressAssociation.address_group_id).filter(
                ag_models.AddressAssociation.address_group_id.in_(list(found))).all():
            found[group].append(str(address))
    return {g: sorted(a) for g, a in found.items()}


def set_inputs(context, network_id: str, set_key: str,
               including: PortSet | None = None) -> SetInputs | None:
    """The inputs of the set's port group on the network; None: no port of it there.

    ``including``: a port being bound into the set (counted even if Neutron's tables
    do not show its set yet).
    """
    members = [s for s in port_sets(context, network_id).values() if s.key == set_key]
    if including is not None and including.key == set_key and \
            all(m.port_id != including.port_id for m in members):
        members.append(including)
    if not members:
        return None
    groups = members[0].security_group_ids
    own = addresses(context, [m.port_id for m in members])
    rules = rules_of(context, groups)
    remote = {r["remote_group_id"] for r in rules if r.get("remote_group_id")}
    remote_ag = {r["remote_address_group_id"] for r in rules
                 if r.get("remote_address_group_id")}
    return SetInputs(groups, rules, own.of(own.by_port),
                     members_addresses(context, remote), address_groups(context, remote_ag),
                     bool(own.foreign_mac))


def network_inputs(context, network_id: str,
                   members_seen: dict[str, list[str]] | None = None,
                   about: Collection[str] | None = None) -> dict[str, SetInputs]:
    """``set_inputs`` of every security group set with ports on the network (see
    :func:`networks_inputs`)."""
    return networks_inputs(context, [network_id], members_seen, about).get(network_id, {})


def networks_inputs(context, network_ids: Collection[str],
                    members_seen: dict[str, list[str]] | None = None,
                    about: Collection[str] | None = None
                    ) -> dict[str, dict[str, SetInputs]]:
    """Per network, ``set_inputs`` of every security group set with ports there, in a
    fixed number of queries however many networks and sets (the policy worker plans a
    batch of networks at once: a member joining a group every network's sets name as
    remote group, as Neutron's default group does, concerns every network).

    ``members_seen``: remote groups' member addresses already read in this batch (a
    group's members are the same for every network: read once, kept here).
    ``about``: only the sets holding one of these groups or naming one as remote group
    (what a change of those groups can touch); None: every set.
    """
    per_network: dict[str, list[PortSet]] = {}
    for port_set in port_sets(context, network_ids=network_ids).values():
        if port_set.port_security and port_set.key not in (model.OPEN, model.BLOCKED):
            per_network.setdefault(port_set.network_id, []).append(port_set)
    if not per_network:
        return {}
    rules = rules_of(context, {g for sets in per_network.values() for s in sets
                               for g in s.security_group_ids})
    if about is not None:
        touched = set(about)
        touched |= {r["security_group_id"] for r in rules
                    if r.get("remote_group_id") in touched}
        per_network = {net: kept for net, sets in per_network.items()
                       if (kept := [s for s in sets if touched & set(s.security_group_ids)])}
        groups = {g for sets in per_network.values() for s in sets for g in s.security_group_ids}
        rules = [r for r in rules if r["security_group_id"] in groups]
    own = addresses(context, [s.port_id for sets in per_network.values() for s in sets])
    remote = {r["remote_group_id"] for r in rules if r.get("remote_group_id")}
    remote_ag = {r["remote_address_group_id"] for r in rules
                 if r.get("remote_address_group_id")}
    seen = members_seen if members_seen is not None else {}
    seen.update(members_addresses(context, remote - set(seen)))
    named = address_groups(context, remote_ag)
    found: dict[str, dict[str, SetInputs]] = {}
    for network_id, sets in per_network.items():
        by_key: dict[str, list[PortSet]] = {}
        for port_set in sets:
            by_key.setdefault(port_set.key, []).append(port_set)
        for key, ports in by_key.items():
            own_groups = set(ports[0].security_group_ids)
            own_rules = [r for r in rules if r["security_group_id"] in own_groups]
            needed = {r["remote_group_id"] for r in own_rules if r.get("remote_group_id")}
            needed_ag = {r["remote_address_group_id"] for r in own_rules
                         if r.get("remote_address_group_id")}
            found.setdefault(network_id, {})[key] = SetInputs(
                ports[0].security_group_ids, own_rules,
                own.of(p.port_id for p in ports),
                {g: seen.get(g, []) for g in needed},
                {g: named.get(g, []) for g in needed_ag},
                any(p.port_id in own.foreign_mac for p in ports))
    return found


def networks_of_groups(context, security_group_ids: Collection[str],
                       through_remote: bool = True, members: bool = True) -> set[str]:
    """Networks whose port groups depend on these groups: those of the groups' member
    ports (``members``) and (``through_remote``) of members of groups whose rules name
    them as remote."""
    groups = sorted(set(security_group_ids))
    if not groups or not (members or through_remote):
        return set()
    binding = sg_models.SecurityGroupPortBinding
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        wanted = binding.security_group_id.in_(groups) if members else None
        if through_remote:      # one query: the port create path runs it every time
            naming_them = session.query(sg_models.SecurityGroupRule.security_group_id).filter(
                sg_models.SecurityGroupRule.remote_group_id.in_(groups))
            naming = binding.security_group_id.in_(naming_them.scalar_subquery())
            wanted = naming if wanted is None else wanted | naming
        return {row[0] for row in session.query(models_v2.Port.network_id).join(
            binding, binding.port_id == models_v2.Port.id).filter(wanted).distinct().all()}


def networks_naming(context, security_group_ids: Collection[str]) -> dict[str, set[str]]:
    """Per group, the networks with ports in groups whose rules name it as remote group
    (whose filters hold its members' addresses); one query however many groups."""
    groups = sorted(set(security_group_ids))
    if not groups:
        return {}
    rule, binding = sg_models.SecurityGroupRule, sg_models.SecurityGroupPortBinding
    out: dict[str, set[str]] = {group: set() for group in groups}
    with db_api.CONTEXT_READER.using(context):
        for group, network_id in context.session.query(
                rule.remote_group_id, models_v2.Port.network_id).join(
                binding, binding.security_group_id == rule.security_group_id).join(
                models_v2.Port, models_v2.Port.id == binding.port_id).filter(
                rule.remote_group_id.in_(groups)).distinct():
            out[group].add(network_id)
    return out


def groups_naming_address_group(context, address_group_id: str) -> set[str]:
    with db_api.CONTEXT_READER.using(context):
        return {row[0] for row in context.session.query(
            sg_models.SecurityGroupRule.security_group_id).filter(
            sg_models.SecurityGroupRule.remote_address_group_id == address_group_id).all()}


def plugged(context, port_ids: Collection[str] | None = None,
            active_only: bool = False) -> dict[str, set[str]]:
    """Port -> the sets its bindings name (``active_only``: its active binding's):
    where its NIC is plugged, or about to be, until the policy worker moves it.  One
    query however many ports; ``port_ids`` None: every port vsphere_dvs bound.  A
    binding that names no port group (not ours, or not bound) names no set."""
    if port_ids is not None and not port_ids:
        return {}
    binding = ml2_models.PortBinding
    with db_api.CONTEXT_READER.using(context):
        query = context.session.query(binding.port_id, binding.vif_details)
        if port_ids is None:
            query = query.filter(binding.port_id.in_(context.session.query(
                ml2_models.PortBindingLevel.port_id).filter(
                ml2_models.PortBindingLevel.driver == names.VSPHERE_DRIVER)
                .scalar_subquery()))
        else:
            query = query.filter(binding.port_id.in_(sorted(port_ids)))
        if active_only:
            query = query.filter(binding.status == "ACTIVE")
        rows = query.all()
    found: dict[str, set[str]] = {}
    for port_id, details in rows:
        try:
            parsed = json.loads(details or "{}")
        except ValueError:
            continue
        if isinstance(parsed, dict) and "pg_id" in parsed:
            # Bound before issue 13: on the network's one port group, the open set's.
            found.setdefault(port_id, set()).add(
                str(parsed.get(VIF_DETAILS_SET) or model.OPEN))
    return found


def plugged_sets(context, port_ids: Collection[str]) -> set[str]:
    """The sets named by these ports' bindings (active or not)."""
    return {key for keys in plugged(context, port_ids).values() for key in keys}


@dataclasses.dataclass(frozen=True)
class PendingMove:
    """A bound port whose NIC sits on another set's port group than its set needs."""
    port_id: str
    network_id: str
    plugged: str        # the set its binding names (where its NIC is)
    wanted: str         # the set its groups, port security and admin state make now


def pending_moves(context) -> list[PendingMove]:
    """Ports whose active binding names a set other than their own: a move the policy
    worker has not done (yet, or it failed: vCenter refused the NIC's reconfigure)."""
    on = {port: min(keys) for port, keys in plugged(context, active_only=True).items()}
    if not on:
        return []
    sets = port_sets(context, port_ids=sorted(on))
    return [PendingMove(port_id, found.network_id, on[port_id], found.key)
            for port_id, found in sorted(sets.items()) if on[port_id] != found.key]
