"""Sync: repair what an audit found, with the same idempotent verbs the workers use.

Port groups: missing ones are created and wrong VLANs set (``ensure_port_group``);
orphans - ours, with no bound port - are deleted (never one without our marker).
Leaves: the networks that drifted on any leaf are converged on every leaf, in
batches (one transaction per leaf per batch), with progress on long runs - not to
the targets the audit computed, which may be older than what the fabric worker has
written since (a vMotion), but from Neutron's state read again under the journal's
claim (``converge.py``); a leaf that refuses one network still gets the others.
A port group's VLAN is read again from Neutron just before it is set (the audit's
may be older than a bind since).  Objects made by an earlier version for networks
this Neutron has (drift ``*_legacy``) are adopted first - given this deployment's
id - so the converge that follows treats them as ours.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.sync import converge, expected
from networking_dvs_fabric.sync.audit import Parts, Report
from networking_dvs_fabric.vcenter import errors, usage

BATCH = 200
FRESH_FOR = 1.0      # seconds a read of the port groups Neutron wants is used for


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
    fix = {(d.where.removeprefix("vCenter DVS "), d.network_id) for d in report.drifts
           if d.kind in ("port_group_missing", "port_group_vlan")}
    wanted = _Wanted(context, dict(vsphere.settings.dvs_mappings))
    for dvs, network_id in sorted(fix):
        want = wanted.get(dvs, network_id)
        if want is None:
            progress(f"port group of network {network_id} on {dvs}: no longer needed")
            continue
        try:
            vsphere.ensure_port_group(want.physical_network, network_id, want.network_name,
                                      want.vlan)
            done.port_groups += 1
            progress(f"port group of network {network_id} on {dvs}: VLAN {want.vlan}")
        except errors.VCenterError as exc:
            done.failures.append(f"port group of {network_id} on {dvs}: {exc}")
    for dvs, network_id in report.orphan_port_groups:
        hosts = vsphere.binding_hosts(dvs)
        try:
            if usage.release_if_unused(context, vsphere, dvs, network_id,
                                       hosts) == usage.RELEASED:
                done.port_groups += 1
                progress(f"orphan port group of network {network_id} on {dvs} deleted")
            else:
                done.failures.append(f"orphan port group of {network_id} on {dvs} kept "
                                     "(still in use)")
        except errors.VCenterError as exc:
            done.failures.append(f"orphan port group of {network_id} on {dvs}: {exc}")


class _Wanted:
    """The port groups Neutron wants now: read again once the last read is older
    than ``FRESH_FOR`` (each write costs a vCenter task; a read per write would cost
    a query over every binding)."""

    def __init__(self, context, dvs_mappings: dict[str, str]) -> None:
        self._context, self._mappings = context, dvs_mappings
        self._read_at = float("-inf")
        self._wanted: dict[tuple[str, str], expected.ExpectedPortGroup] = {}

    def get(self, dvs: str, network_id: str) -> expected.ExpectedPortGroup | None:
        if time.monotonic() - self._read_at > FRESH_FOR:
            self._wanted = expected.port_groups(self._context, self._mappings)
            self._read_at = time.monotonic()
        return self._wanted.get((dvs, network_id))


def _leaves(context, parts: Parts, report: Report, done: Repaired,
            progress: Callable[[str], None], handler: converge.Handler | None) -> None:
    drifted = {d.network_id for d in report.drifts if d.where.startswith("leaf ")}
    if not drifted:
        return
    result = converge.networks(context, parts, sorted(drifted), BATCH, progress, handler)
    done.leaf_networks += len(result.done)
    done.failures.extend(result.failures)
