"""A full read of vCenter written in one transaction: the locations table becomes the picture.

After a start or a reconnect the watcher has every VM of the datacenter at once.
Writing them VM by VM (``db.locations.set_vm``: a lease check, a port query and a
write each) cost one transaction a VM - most of a 38 s start at 400 VMs.  Here the
whole picture is one write, in the caller's fenced transaction (``worker._fenced``:
the lease checked and held first, the journal rows of every changed network in the
same transaction):

- each placed port gets its row (its VM, name, host, MAC, port group), the host
  change clearing a pending migration destination, as ``set_vm`` does;
- every other row goes: VMs gone, powered off or not ours, NICs detached, ports
  Neutron no longer knows (``set_vm`` + ``keep_only_vms`` in one).

A port placed on two VMs (``claims.place`` believes both only if both carry the
port's MAC on its network and claim it for its instance) goes to the one read last,
as VM-by-VM writes in the same order would have left it.
"""
from __future__ import annotations

from typing import Iterable

from neutron.db import models_v2
from oslo_utils.timeutils import utcnow

from networking_dvs_fabric.db import locations, models
from networking_dvs_fabric.db.in_lists import CHUNK, chunks  # noqa: F401 - offered here too

Location = models.PortLocation


def _networks_of_ports(session, port_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(port_ids))
    out: dict[str, str] = {}
    for chunk in chunks(ids):
        out.update(session.query(models_v2.Port.id, models_v2.Port.network_id)
                   .filter(models_v2.Port.id.in_(chunk)).all())
    return out


def set_all(context, seen: Iterable[locations.Seen]) -> set[str]:
    """The table becomes exactly ``seen`` (ports Neutron does not know left out).

    Call inside a write transaction (the caller's fence).  Returns the networks whose
    locations changed.
    """
    now = utcnow()
    session = context.session
    wanted = {s.port_id: s for s in seen}           # the last VM read wins a port
    networks = _networks_of_ports(session, wanted)
    wanted = {port_id: s for port_id, s in wanted.items() if port_id in networks}
    existing = {row.port_id: row for row in session.query(Location)}
    changed: set[str] = set()
    gone = sorted(set(existing) - set(wanted))
    for port_id in gone:
        changed.add(existing[port_id].network_id)
    for chunk in chunks(gone):
        session.query(Location).filter(Location.port_id.in_(chunk)).delete(
            synchronize_session=False)
    same: list[str] = []
    new: list[dict] = []
    for port_id, s in wanted.items():
        row = existing.get(port_id)
        if row is None:
            new.append({"port_id": port_id, "network_id": networks[port_id],
                        "vm_moid": s.vm_moid, "vm_name": s.vm_name,
                        "esxi_host": s.esxi_host, "mac": s.mac,
                        "port_group": s.port_group, "destination_host": None,
                        "seen_at": now})
            changed.add(networks[port_id])
            continue
        moved = row.esxi_host != s.esxi_host
        arrived = not moved and row.destination_host == s.esxi_host
        if not (moved or arrived or row.vm_moid != s.vm_moid or row.mac != s.mac
                or row.port_group != s.port_group or row.vm_name != s.vm_name):
            same.append(port_id)
            continue
        if moved or row.vm_moid != s.vm_moid or row.mac != s.mac \
                or row.port_group != s.port_group or row.vm_name != s.vm_name:
            changed.add(row.network_id)
        row.vm_moid, row.vm_name, row.mac, row.port_group = (
            s.vm_moid, s.vm_name, s.mac, s.port_group)
        row.esxi_host = s.esxi_host
        if moved or arrived:
            row.destination_host = None
        row.seen_at = now
    if new:                                        # one INSERT, not one per row
        session.execute(Location.__table__.insert(), new)
    for chunk in chunks(same):                     # unchanged: only seen again
        session.query(Location).filter(Location.port_id.in_(chunk)).update(
            {Location.seen_at: now}, synchronize_session=False)
    return changed
