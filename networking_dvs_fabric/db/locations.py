"""Where each Neutron port's VM is: the ``dvs_fabric_port_locations`` table.

Written only by the vCenter watcher (one per vCenter, see ``watcher/worker.py``),
read by the fabric worker (``fabric/intent.py``) and ``dvs-fabric ports``.  Every
function returns the networks whose picture changed, so the caller can record
them in the journal for the fabric worker.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from neutron.db import models_v2
from neutron_lib.db import api as db_api
from oslo_utils.timeutils import utcnow

from networking_dvs_fabric.db import models

Location = models.PortLocation


@dataclasses.dataclass(frozen=True)
class Seen:
    """One Neutron port's NIC as the watcher saw it on a running VM."""

    port_id: str
    vm_moid: str
    vm_name: str
    esxi_host: str
    mac: str
    port_group: str | None


def _networks_of_ports(session, port_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(port_ids))
    if not ids:
        return {}
    return {row.id: row.network_id for row in session.query(
        models_v2.Port.id, models_v2.Port.network_id).filter(models_v2.Port.id.in_(ids))}


@db_api.retry_if_session_inactive()
def set_vm(context, vm_moid: str, seen: list[Seen]) -> set[str]:
    """The VM now has exactly these Neutron ports (empty: off, gone or none of ours).

    Ports Neutron does not know are ignored.  A host change clears the pending
    migration destination.  Returns the networks whose locations changed.
    """
    changed: set[str] = set()
    now = utcnow()
    with db_api.CONTEXT_WRITER.using(context):
        session = context.session
        networks = _networks_of_ports(session, (s.port_id for s in seen))
        existing = {row.port_id: row for row in session.query(Location).filter(
            Location.vm_moid == vm_moid)}
        wanted = {s.port_id: s for s in seen if s.port_id in networks}
        # Ports that moved here from another VM's row (a NIC re-plugged) are taken over.
        others = {row.port_id: row for row in session.query(Location).filter(
            Location.port_id.in_(sorted(set(wanted) - set(existing))))} if wanted else {}
        for port_id, row in existing.items():
            if port_id not in wanted:
                changed.add(row.network_id)
                session.delete(row)
        for port_id, s in wanted.items():
            row = existing.get(port_id) or others.get(port_id)
            if row is None:
                session.add(Location(port_id=port_id, network_id=networks[port_id],
                                     vm_moid=vm_moid, vm_name=s.vm_name,
                                     esxi_host=s.esxi_host, mac=s.mac,
                                     port_group=s.port_group, seen_at=now))
                changed.add(networks[port_id])
                continue
            moved = row.esxi_host != s.esxi_host
            if (moved or row.vm_moid != vm_moid or row.mac != s.mac
                    or row.port_group != s.port_group or row.vm_name != s.vm_name):
                changed.add(row.network_id)
            row.vm_moid, row.vm_name, row.mac, row.port_group = (
                vm_moid, s.vm_name, s.mac, s.port_group)
            if moved:
                row.esxi_host = s.esxi_host
                row.destination_host = None
            elif row.destination_host == s.esxi_host:
                row.destination_host = None
            row.seen_at = now
    return changed


@db_api.retry_if_session_inactive()
def set_destination(context, vm_moid: str, host: str) -> set[str]:
    """A migration of the VM to ``host`` has started: prepare there (make before break)."""
    changed: set[str] = set()
    with db_api.CONTEXT_WRITER.using(context):
        for row in context.session.query(Location).filter(Location.vm_moid == vm_moid):
            if row.esxi_host != host and row.destination_host != host:
                row.destination_host = host
                changed.add(row.network_id)
    return changed


@db_api.retry_if_session_inactive()
def keep_only_vms(context, vm_moids: Iterable[str]) -> set[str]:
    """After a full read: forget every VM not in it (gone while no watcher ran)."""
    keep = set(vm_moids)
    changed: set[str] = set()
    with db_api.CONTEXT_WRITER.using(context):
        for row in context.session.query(Location):
            if row.vm_moid not in keep:
                changed.add(row.network_id)
                context.session.delete(row)
    return changed


@dataclasses.dataclass(frozen=True)
class Where:
    esxi_host: str
    destination_host: str | None
    mac: str


def of_networks(context, network_ids: Iterable[str]) -> dict[str, Where]:
    """port id -> where its VM is, for the networks' ports that were seen."""
    ids = sorted(set(network_ids))
    if not ids:
        return {}
    with db_api.CONTEXT_READER.using(context):
        rows = context.session.query(Location.port_id, Location.esxi_host,
                                     Location.destination_host, Location.mac).filter(
            Location.network_id.in_(ids)).all()
    return {r.port_id: Where(r.esxi_host, r.destination_host, r.mac) for r in rows}


def listing(context, network_id: str | None = None) -> list[dict]:
    """Rows for ``dvs-fabric ports``: JSON-ready dicts, by network then port."""
    with db_api.CONTEXT_READER.using(context):
        query = context.session.query(Location)
        if network_id:
            query = query.filter(Location.network_id == network_id)
        rows = query.order_by(Location.network_id, Location.port_id).all()
        return [{"port_id": r.port_id, "network_id": r.network_id, "vm": r.vm_name,
                 "vm_moid": r.vm_moid, "esxi_host": r.esxi_host, "mac": r.mac,
                 "port_group": r.port_group, "destination_host": r.destination_host,
                 "seen_at": r.seen_at.isoformat() + "+00:00"} for r in rows]
