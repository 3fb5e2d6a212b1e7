"""``dvs-fabric audit`` and ``dvs-fabric sync``: is the fabric what Neutron says? Make it so."""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from networking_dvs_fabric.cmd import neutron_db

KIND_TITLES = {
    "port_group_missing": "port groups missing in vCenter",
    "port_group_vlan": "port groups with the wrong VLAN",
    "port_group_orphan": "port groups of ours no port needs",
    "switch_missing": "logical switches missing on a leaf",
    "switch_orphan": "logical switches of ours no port needs",
    "switch_vni": "logical switches with the wrong VNI",
    "binding_missing": "VLAN bindings missing",
    "binding_extra": "VLAN bindings not needed",
    "mac_missing": "remote MACs missing",
    "mac_wrong": "remote MACs pointing at the wrong leaf",
    "mac_extra": "remote MACs not needed",
    "flood_list": "flooding lists that differ",
}


def _parts():
    from oslo_config import cfg

    from networking_dvs_fabric import opts
    from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
    from networking_dvs_fabric.sync.audit import Parts
    from networking_dvs_fabric.topology import Topology
    opts.register_opts(cfg.CONF)
    fabric_group, vsphere_group = cfg.CONF[opts.FABRIC_GROUP], cfg.CONF[opts.VSPHERE_GROUP]
    topology = Topology.load(fabric_group.topology_file) if fabric_group.topology_file \
        else None
    vsphere = directory = None
    if vsphere_group.vcenter_url:
        from networking_dvs_fabric.ml2.vsphere_dvs import backend_from_conf
        from networking_dvs_fabric.vcenter.hosts import VCenterHostDirectory
        vsphere = backend_from_conf(vsphere_group)
        directory = VCenterHostDirectory(vsphere)
    fabric = HwvtepBackend(list(topology.leaves.values()),
                           connect_timeout=fabric_group.ovsdb_connect_timeout,
                           txn_timeout=fabric_group.ovsdb_transaction_timeout) \
        if topology else None
    return Parts(topology, directory, vsphere, fabric, fabric_group.mac_distribution,
                 fabric_group.mode)


def _close(parts) -> None:
    if parts.fabric is not None:
        parts.fabric.close()
    if parts.vsphere is not None:
        parts.vsphere.stop()


def run_audit(files: Sequence[Path]):
    from networking_dvs_fabric.sync.audit import audit

    def query(context):
        parts = _parts()
        try:
            return audit(context, parts)
        finally:
            _close(parts)
    return neutron_db.read(files, query)


def run_sync(files: Sequence[Path], dry_run: bool):
    from networking_dvs_fabric.sync.audit import audit
    from networking_dvs_fabric.sync.repair import repair

    def progress(text: str) -> None:
        print(f"sync: {text}", file=sys.stderr, flush=True)

    def query(context):
        parts = _parts()
        try:
            before = audit(context, parts)
            if dry_run or not before.drifts:
                return before, None, before
            progress(f"{len(before.drifts)} drifts to repair")
            done = repair(context, parts, before, progress)
            return before, done, audit(context, parts)
        finally:
            _close(parts)
    return neutron_db.read(files, query)


def format_report(report) -> str:
    lines = []
    for where in report.unreachable:
        lines.append(f"UNREACHABLE  {where}")
    by_kind = defaultdict(list)
    for drift in report.drifts:
        by_kind[drift.kind].append(drift)
    for kind, drifts in by_kind.items():
        lines.append(f"\n{KIND_TITLES.get(kind, kind)} ({len(drifts)}):")
        lines.append(f"  {'where':22} {'network':36}  detail")
        for d in drifts:
            lines.append(f"  {d.where:22} {d.network_id:36}  {d.detail}")
    checked = ", ".join(f"{k}: {v} of ours" for k, v in sorted(report.checked.items()))
    verdict = {0: "clean", 1: f"{len(report.drifts)} drifts",
               2: "some backends could not be read"}[report.exit_code]
    lines.append(f"\naudit: {verdict} ({checked or 'nothing checked'})")
    return "\n".join(lines).lstrip("\n")


def to_json(report) -> str:
    return json.dumps({"drifts": [d.__dict__ for d in report.drifts],
                       "unreachable": report.unreachable, "checked": report.checked,
                       "exit_code": report.exit_code}, indent=2)
