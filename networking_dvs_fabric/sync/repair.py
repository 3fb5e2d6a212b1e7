"""Sync: repair what an audit found, with the same idempotent verbs the workers use.

Port groups, per (network, DVS, set): missing ones are created and wrong VLANs set
(``ensure_port_group``, with the set's policy); a policy changed in vCenter is put
back (``set_policy``); orphans - ours, of a set no bound port needs - are deleted
(never one without our marker) through the release (``usage.release_if_unused``).
A set whose policy cannot be made (``filter_too_large``) is not touched.  A port
whose NIC was not moved to its set's port group (``port_set_pending``) is moved as
the policy worker would (``PolicyHandler.move_port``: make before break), after the
port groups are right.
Leaves: the networks that drifted on any leaf are converged on every leaf, in
batches (one transaction per leaf per batch), with progress on long runs - not to
the targets the audit computed, which may be older than what the fabric worker has
written since (a vMotion), but from Neutron's state read again under the journal's
claim (``converge.py``); a leaf that refuses one network still gets the others.
What a network's port groups need (sets, VLAN, policy) is read again from Neutron
just before they are written (the audit's may be older than a bind since).  Objects
made by an earlier version for networks this Neutron has (drift ``*_legacy``) are
adopted first - given this deployment's id - so the converge that follows treats
them as ours.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.security import translate
from networking_dvs_fabric.sync import converge, expected
from networking_dvs_fabric.sync.audit import Parts, Report
from networking_dvs_fabric.vcenter import errors, usage
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.policy_worker import PolicyHandler
from networking_dvs_fabric.vcenter.portgroups import PortGroup

BATCH = 200


@dataclasses.dataclass
class Repaired:
    port_groups: int = 0
    leaf_networks: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def repair(context, parts: Parts, report: Report,
           progress: Callable[[str], None] = lambda _: None,
           handler: converge.Handler | None = None) -> Repaired:
    """Repair the report's drifts.  ``handler``: the fabric worker's (``FabricSync``)
    when the full sync runs in it; by default one built from ``parts``."""
    done = Repaired()
    _adopt(parts, report, done, progress)
    if parts.vsphere is not None:
        _port_groups(context, parts, report, done, progress)
        _moves(context, parts.vsphere, report, done, progress)
    if parts.fabric is not None:
        _leaves(context, parts, report, done, progress, handler)
    return done


def _adopt(parts: Parts, report: Report, done: Repaired,
           progress: Callable[[str], None]) -> None:
    """Give legacy objects of our networks (the audit checked Neutron has them) our id."""
    for dvs, pg in report.legacy_port_groups:
        try:
            parts.vsphere.adopt_port_group(dvs, pg)
            done.port_groups += 1
            progress(f"port group {pg.name} of an earlier version adopted")
        except errors.VCenterError as exc:
            done.failures.append(f"adopting port group {pg.name} on {dvs}: {exc}")
    by_leaf: dict[str, set[str]] = {}
    for d in report.drifts:
        if d.kind == "switch_legacy":
            by_leaf.setdefault(d.where.removeprefix("leaf "), set()).add(d.network_id)
    for leaf, networks in sorted(by_leaf.items()):
        try:
            adopted = parts.fabric.adopt(leaf, networks)
            progress(f"leaf {leaf}: {len(adopted)} logical switches of an earlier version "
                     "adopted")
        except FabricError as exc:
            done.failures.append(f"leaf {leaf}: adopting switches: {exc}")


def _port_groups(context, parts: Parts, report: Report, done: Repaired,
                 progress: Callable[[str], None]) -> None:
    vsphere = parts.vsphere
    assert vsphere is not None
    fix: dict[tuple[str, str], dict[str, set[str]]] = {}     # (DVS, network) -> set -> kinds
    for d in report.drifts:
        if d.kind in ("port_group_missing", "port_group_vlan", "filter_drift"):
            fix.setdefault((d.where.removeprefix("vCenter DVS "), d.network_id), {}) \
                .setdefault(d.set_key, set()).add(d.kind)
    # Orphans first: their names and their share of max_port_groups are freed for the
    # port groups to make (an admin may have re-marked one as another set's).
    _release_orphans(context, vsphere, report, done, progress)
    for (dvs, network_id), sets in sorted(fix.items()):
        try:
            _network(context, vsphere, dvs, network_id, sets, done, progress)
        except errors.VCenterError as exc:
            done.failures.append(f"port groups of {network_id} on {dvs}: {exc}")


def _release_orphans(context, vsphere: VSphereBackend, report: Report, done: Repaired,
                     progress: Callable[[str], None]) -> None:
    orphans: dict[tuple[str, str], list[str]] = {}
    for dvs, network_id, set_key in report.orphan_port_groups:
        orphans.setdefault((dvs, network_id), []).append(set_key)
    for (dvs, network_id), sets in sorted(orphans.items()):
        what = f"orphan port groups of network {network_id} on {dvs} (sets " \
               f"{', '.join(sorted(sets))})"
        try:
            # Deletes each of the network's port groups whose set no port needs now.
            result = usage.release_if_unused(context, vsphere, dvs, network_id,
                                             vsphere.binding_hosts(dvs))
        except errors.VCenterError as exc:
            done.failures.append(f"{what}: {exc}")
            continue
        if result in (usage.RELEASED, usage.IN_USE):
            done.port_groups += len(sets)
            progress(f"{what} deleted")
        else:
            done.failures.append(f"{what} kept ({result})")


def _network(context, vsphere: VSphereBackend, dvs: str, network_id: str,
             sets: dict[str, set[str]], done: Repaired,
             progress: Callable[[str], None]) -> None:
    """Repair the drifted sets of one network on one DVS from Neutron's state read
    again (the audit's may be older than a bind or an unbind since)."""
    wanted = expected.port_groups(context, dict(vsphere.settings.dvs_mappings),
                                  {dvs: vsphere.binding_hosts(dvs)}, [network_id])
    have: dict[str, PortGroup] | None = None
    for set_key, kinds in sorted(sets.items()):
        what = f"port group of network {network_id} set {set_key} on {dvs}"
        want = wanted.get((dvs, network_id, set_key))
        policy = expected.policy(context, network_id, set_key)
        if want is None or (policy.policy is None and policy.error is None):
            progress(f"{what}: no longer needed")
            continue
        if policy.policy is None:
            done.failures.append(f"{what}: not repaired: {policy.error}")
            continue
        try:
            if kinds & {"port_group_missing", "port_group_vlan"}:
                if "port_group_missing" in kinds:
                    # The audit read vCenter whole: a cached one is a deletion the
                    # watch has not reported yet (a concurrent creator's is found
                    # again by its DuplicateName).
                    for pg in vsphere.cached_port_groups(dvs, network_id) or []:
                        if pg.set_key == set_key:
                            vsphere.forget_port_group(want.physical_network, network_id,
                                                      pg.key)
                # Made, or its VLAN set, with the policy: vCenter takes both in one spec.
                vsphere.ensure_port_group(want.physical_network, network_id,
                                          want.network_name, want.vlan, set_key,
                                          lambda wanted_policy=policy.policy: wanted_policy)
                done.port_groups += 1
                progress(f"{what}: VLAN {want.vlan}")
                continue
            if have is None:        # read whole, now: the audit's read may be stale
                have = {pg.set_key: pg
                        for pg in vsphere.network_port_groups(dvs, network_id)}
            pg = have.get(set_key)
            if pg is None:
                done.failures.append(f"{what}: gone since the audit; the next one says "
                                     "whether it is missing")
            elif pg.policy is None or not pg.policy.same_as(policy.policy):
                vsphere.set_policy(dvs, pg, policy.policy)
                done.port_groups += 1
                progress(f"{what}: filter put back ({len(policy.policy.rules)} rules)")
        except errors.VCenterError as exc:
            done.failures.append(f"{what}: {exc}")


def _moves(context, vsphere: VSphereBackend, report: Report, done: Repaired,
           progress: Callable[[str], None]) -> None:
    if not report.pending_moves:
        return
    handler = PolicyHandler(vsphere)
    for port_id in report.pending_moves:
        try:
            handler.move_port(context, port_id)
        except (errors.VCenterError, translate.PolicyTooLarge) as exc:
            done.failures.append(f"moving the NIC of port {port_id}: {exc}")
            continue
        done.port_groups += 1
        progress(f"port {port_id}: NIC on its set's port group")


def _leaves(context, parts: Parts, report: Report, done: Repaired,
            progress: Callable[[str], None], handler: converge.Handler | None) -> None:
    drifted = {d.network_id for d in report.drifts if d.where.startswith("leaf ")}
    if not drifted:
        return
    result = converge.networks(context, parts, sorted(drifted), BATCH, progress, handler)
    done.leaf_networks += len(result.done)
    done.failures.extend(result.failures)
