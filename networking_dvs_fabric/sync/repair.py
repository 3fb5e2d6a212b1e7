"""Sync: repair what an audit found, with the same idempotent verbs the workers use.

Port groups: missing ones are created and wrong VLANs set (``ensure_port_group``);
orphans - ours, with no bound port - are deleted (never one without our marker).
Leaves: each leaf is converged to its target for the networks that drifted, in
batches (one transaction per leaf per batch), with progress on long runs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.sync.audit import Parts, Report
from networking_dvs_fabric.vcenter import errors, usage

BATCH = 200


@dataclasses.dataclass
class Repaired:
    port_groups: int = 0
    leaf_networks: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def repair(context, parts: Parts, report: Report,
           progress: Callable[[str], None] = lambda _: None) -> Repaired:
    done = Repaired()
    if parts.vsphere is not None:
        _port_groups(context, parts, report, done, progress)
    if parts.fabric is not None:
        _leaves(parts, report, done, progress)
    return done


def _port_groups(context, parts: Parts, report: Report, done: Repaired,
                 progress: Callable[[str], None]) -> None:
    vsphere = parts.vsphere
    assert vsphere is not None
    fix = {(d.where.removeprefix("vCenter DVS "), d.network_id) for d in report.drifts
           if d.kind in ("port_group_missing", "port_group_vlan")}
    for dvs, network_id in sorted(fix):
        want = report.port_groups[(dvs, network_id)]
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
            if vsphere.release_port_group(dvs, network_id,
                                          usage.in_use_check(context, network_id, hosts)):
                done.port_groups += 1
                progress(f"orphan port group of network {network_id} on {dvs} deleted")
            else:
                done.failures.append(f"orphan port group of {network_id} on {dvs} kept "
                                     "(still in use)")
        except errors.VCenterError as exc:
            done.failures.append(f"orphan port group of {network_id} on {dvs}: {exc}")


def _leaves(parts: Parts, report: Report, done: Repaired,
            progress: Callable[[str], None]) -> None:
    drifted: dict[str, set[str]] = {}
    for d in report.drifts:
        if d.where.startswith("leaf "):
            drifted.setdefault(d.where.removeprefix("leaf "), set()).add(d.network_id)
    for leaf, networks in sorted(drifted.items()):
        ordered = sorted(networks)
        for start in range(0, len(ordered), BATCH):
            chunk = ordered[start:start + BATCH]
            target = {n: report.leaf_targets[leaf][n] for n in chunk}
            try:
                parts.fabric.converge(leaf, target)
                done.leaf_networks += len(chunk)
            except FabricError as exc:
                done.failures.append(f"leaf {leaf}: {exc}")
                break
            progress(f"leaf {leaf}: {min(start + BATCH, len(ordered))}/{len(ordered)} "
                     "networks converged")
