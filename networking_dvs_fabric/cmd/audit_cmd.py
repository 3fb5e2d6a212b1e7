"""``dvs-fabric audit`` and ``dvs-fabric sync``: is the fabric what Neutron says? Make it so."""
from __future__ import annotations

import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from networking_dvs_fabric.cmd import neutron_db
from networking_dvs_fabric.lab.procs import LabError

KIND_TITLES = {
    "port_group_missing": "port groups missing in vCenter",
    "port_group_vlan": "port groups with the wrong VLAN",
    "port_group_orphan": "port groups of ours no port needs",
    "filter_drift": "port groups whose filter or security policy was changed in vCenter",
    "filter_too_large": "port groups whose filter cannot be made (too many rules)",
    "port_set_pending": "ports whose NIC is still on another set's port group",
    "switch_missing": "logical switches missing on a leaf",
    "switch_orphan": "logical switches of ours no port needs",
    "switch_vni": "logical switches with the wrong VNI",
    "binding_missing": "VLAN bindings missing",
    "binding_extra": "VLAN bindings not needed",
    "mac_missing": "remote MACs missing",
    "mac_wrong": "remote MACs pointing at the wrong leaf",
    "mac_extra": "remote MACs not needed",
    "flood_list": "flooding lists that differ",
    "port_group_legacy": "port groups of an earlier version, to adopt",
    "switch_legacy": "logical switches of an earlier version, to adopt",
}


@contextlib.contextmanager
def configured_parts() -> Iterator:
    """The parts Neutron's configuration names (``sync.audit.Parts``), closed after use.

    Built by the same runtime the drivers use; a bad option is refused, naming it.
    """
    from neutron_lib import exceptions as n_exc

    from networking_dvs_fabric import runtime
    from networking_dvs_fabric.sync.audit import Parts
    process_runtime = runtime.for_process()
    try:
        try:
            parts = Parts.of(process_runtime)
        except n_exc.NeutronException as exc:
            raise LabError(str(exc)) from exc
        yield parts
    finally:
        process_runtime.close()


def run_audit(files: Sequence[Path]):
    from networking_dvs_fabric.sync.audit import audit

    def query(context):
        with configured_parts() as parts:
            return audit(context, parts)
    return neutron_db.read(files, query)


def run_sync(files: Sequence[Path], dry_run: bool):
    from networking_dvs_fabric.sync.audit import audit
    from networking_dvs_fabric.sync.repair import repair

    def progress(text: str) -> None:
        print(f"sync: {text}", file=sys.stderr, flush=True)

    def query(context):
        with configured_parts() as parts:
            before = audit(context, parts)
            if dry_run or not before.drifts:
                return before, None, before
            progress(f"{len(before.drifts)} drifts to repair")
            done = repair(context, parts, before, progress)
            return before, done, audit(context, parts)
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
    if report.foreign:
        lines.append(f"\nforeign: other deployments' objects, left alone ({len(report.foreign)}):")
        lines.extend(f"  {line}" for line in report.foreign)
    checked = ", ".join(f"{k}: {v} of ours" for k, v in sorted(report.checked.items()))
    verdict = {0: "clean", 1: f"{len(report.drifts)} drifts",
               2: "some backends could not be read"}[report.exit_code]
    lines.append(f"\naudit: {verdict} ({checked or 'nothing checked'})")
    if report.port_group_count:
        lines.append(port_group_line(report.port_group_count))
    if report.deployment:
        lines.append(f"deployment: {report.deployment}")
    return "\n".join(lines).lstrip("\n")


def port_group_line(count: dict) -> str:
    """The project's port groups on vCenter against ``[ml2_vsphere] max_port_groups``."""
    ours = "unknown (a DVS could not be read)" if count["ours"] is None else count["ours"]
    line = (f"port groups: {ours} of ours on vCenter, limit {count['limit']} "
            "([ml2_vsphere] max_port_groups)")
    if count.get("marked") != count["ours"] and count.get("marked") is not None:
        line += f"; {count['marked']} with the project's marker, other deployments' included"
    return line


def to_json(report) -> str:
    return json.dumps({"drifts": [d.__dict__ for d in report.drifts],
                       "unreachable": report.unreachable, "checked": report.checked,
                       "deployment": report.deployment, "foreign": report.foreign,
                       "port_groups": report.port_group_count,
                       "exit_code": report.exit_code}, indent=2)
