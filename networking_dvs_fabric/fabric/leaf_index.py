"""Lookups into one leaf's IDL replica, kept current by the IDL's row notifications.

Planning a batch of networks must cost what the batch costs, not what the leaf
holds: a leaf carrying 4,000 networks is not read whole to change 200 of them.
The IDL replica is already local, but it has no index: finding a network's
logical switch, the remote MACs of a logical switch or the holder of a (port,
VLAN) meant walking every row and converting its columns each time.  This index
answers those by uuid, and is updated by ``_LeafIdl.notify`` (in the connection
thread, under the connection's lock, like every read of the replica).

When the IDL may have dropped rows without telling (a reconnect makes python-ovs
clear the replica and load it again), the owner marks the index ``stale`` and it is
rebuilt from the replica at its next use.  A lookup also checks that the row it
names is still in the replica, so a stale entry can never be mistaken for a row.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping

from ovs.db import idl as ovs_idl

Row = ovs_idl.Row
# The tables the index follows; the others (switches, locators: a handful of rows)
# are read directly.
INDEXED = ("Logical_Switch", "Physical_Port", "Ucast_Macs_Remote", "Mcast_Macs_Remote")


class LeafIndex:
    """Logical switches by name, bindings by logical switch, remote MACs by logical
    switch.  Call every method with the connection's lock held."""

    def __init__(self) -> None:
        self.stale = True            # built from the replica at the first use
        self.rebuilds = 0
        self._clear()

    def _clear(self) -> None:
        self._ls_by_name: dict[str, uuid.UUID] = {}
        self._ls_name: dict[uuid.UUID, str] = {}
        self._port_map: dict[uuid.UUID, dict[int, uuid.UUID]] = {}   # port -> VLAN -> LS
        self._bound: dict[uuid.UUID, set[tuple[uuid.UUID, int]]] = {}  # LS -> (port, VLAN)
        self._macs: dict[str, dict[uuid.UUID, set[uuid.UUID]]] = {
            "Ucast_Macs_Remote": {}, "Mcast_Macs_Remote": {}}          # table -> LS -> rows
        self._mac_ls: dict[uuid.UUID, uuid.UUID] = {}                  # MAC row -> LS

    def fresh(self, tables: Mapping[str, Any]) -> "LeafIndex":
        """The index, rebuilt first if it may have missed a change."""
        if self.stale:
            self._clear()
            for table in INDEXED:
                for row in tables[table].rows.values():
                    self._add(table, row)
            self.stale = False
            self.rebuilds += 1
        return self

    # -- following the replica --------------------------------------------------
    def notify(self, event: str, row: Row) -> None:
        """One row created, updated or deleted in the replica."""
        if self.stale:
            return                   # rebuilt whole at the next use
        table = row._table.name
        if table not in INDEXED:
            return
        if table == "Physical_Port" and event != ovs_idl.ROW_DELETE:
            self._rebind(row.uuid, _bindings(row))
            return
        self._remove(table, row.uuid)
        if event != ovs_idl.ROW_DELETE:
            self._add(table, row)

    def _rebind(self, port: uuid.UUID, now: dict[int, uuid.UUID]) -> None:
        """A port's bindings are now ``now``: only the pairs that changed are touched
        (a port carrying thousands of networks changes by a few per transaction)."""
        before = self._port_map.get(port, {})
        for vlan, ls_uuid in before.items() - now.items():
            _discard(self._bound, ls_uuid, (port, vlan))
        for vlan, ls_uuid in now.items() - before.items():
            self._bound.setdefault(ls_uuid, set()).add((port, vlan))
        self._port_map[port] = now

    def _add(self, table: str, row: Row) -> None:
        if table == "Logical_Switch":
            self._ls_by_name[row.name] = row.uuid
            self._ls_name[row.uuid] = row.name
        elif table == "Physical_Port":
            self._rebind(row.uuid, _bindings(row))
        else:
            ls = row.logical_switch
            if ls is not None:
                self._macs[table].setdefault(ls.uuid, set()).add(row.uuid)
                self._mac_ls[row.uuid] = ls.uuid

    def _remove(self, table: str, row_uuid: uuid.UUID) -> None:
        if table == "Logical_Switch":
            name = self._ls_name.pop(row_uuid, None)
            if name is not None and self._ls_by_name.get(name) == row_uuid:
                del self._ls_by_name[name]
        elif table == "Physical_Port":
            for vlan, ls_uuid in self._port_map.pop(row_uuid, {}).items():
                _discard(self._bound, ls_uuid, (row_uuid, vlan))
        else:
            ls_uuid = self._mac_ls.pop(row_uuid, None)
            if ls_uuid is not None:
                _discard(self._macs[table], ls_uuid, row_uuid)

    # -- lookups --------------------------------------------------------------------
    def switch_named(self, tables: Mapping[str, Any], name: str) -> Row | None:
        return _row(tables, "Logical_Switch", self._ls_by_name.get(name))

    def switches(self, tables: Mapping[str, Any]) -> Iterable[Row]:
        """Every logical switch (a whole read)."""
        rows = tables["Logical_Switch"].rows
        return [rows[u] for u in self._ls_name if u in rows]

    def holder(self, tables: Mapping[str, Any], port: Row, vlan: int) -> Row | None:
        """The logical switch ``vlan`` of ``port`` is bound to."""
        return _row(tables, "Logical_Switch", self._port_map.get(port.uuid, {}).get(vlan))

    def bound_to(self, ls_uuid: uuid.UUID) -> set[tuple[uuid.UUID, int]]:
        """(port uuid, VLAN) pairs bound to the logical switch, on any switch."""
        return self._bound.get(ls_uuid, set())

    def macs_of(self, tables: Mapping[str, Any], table: str, ls_uuid: uuid.UUID) -> list[Row]:
        """``table``'s rows (remote unicast or multicast MACs) of the logical switch."""
        rows = tables[table].rows
        return [rows[u] for u in sorted(self._macs[table].get(ls_uuid, ())) if u in rows]


def _bindings(row: Row) -> dict[int, uuid.UUID]:
    """A port's ``vlan_bindings`` as the replica holds them: VLAN -> logical switch
    uuid, read from the row's data without making a Row of every switch it names
    (python-ovs's attribute does: ~100 times the cost on a port of 2,000 networks).
    A uuid may name a switch the replica has not got yet; lookups check (``_row``).
    A row read once (``leaf_snapshot``) has no such data: its column is used."""
    data = getattr(row, "_data", None)
    if data is None:
        return {vlan: ls.uuid for vlan, ls in row.vlan_bindings.items() if ls is not None}
    datum = data.get("vlan_bindings")
    if datum is None:
        return {}
    return {key.value: value.value for key, value in datum.values.items()}


def _discard(index: dict[Any, set], key: Any, value: Any) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del index[key]


def _row(tables: Mapping[str, Any], table: str, row_uuid: uuid.UUID | None) -> Row | None:
    if row_uuid is None:
        return None
    return tables[table].rows.get(row_uuid)
