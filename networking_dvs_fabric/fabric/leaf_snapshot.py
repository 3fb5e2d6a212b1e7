"""One leaf read once: a ``select`` of every replicated table, parsed by ``json``.

The audit (``dvs-fabric audit``, ``sync``) reads each leaf whole, once, in a
process that has no replica of it.  Through the IDL that meant a monitor's full
dump parsed by python-ovs's own JSON parser (pure Python here: no ``ovs._json``
C extension on Debian) and turned into rows column by column: ~3 ms a network and
leaf, the leaves' third of an audit at 1,200 networks.  Here one read-only
``transact`` asks for the same columns (``ovsdb_conn.COLUMNS``), the answer is
parsed by the standard library's C decoder (``ovs_json``), and each column is turned
into a Python value only when read.

The rows behave as the IDL's do for :func:`~networking_dvs_fabric.fabric.leaf_view.read_view`
and :class:`~networking_dvs_fabric.fabric.leaf_index.LeafIndex`: ``row.uuid``; a
column as the IDL gives it (a scalar; a list for an optional or a set; a dict for a
map; a referenced row, or None when it is not there).  They are read-only.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Mapping

from networking_dvs_fabric.fabric.api import FabricError, LeafSpec
from networking_dvs_fabric.fabric.ovsdb_conn import (COLUMNS, SCHEMA, _request,
                                                     _use_ssl_files, fetch_schema)



class Column:
    """How one column's JSON becomes the IDL's Python value."""

    __slots__ = ("is_map", "scalar", "key_ref", "value_ref")

    def __init__(self, type_json: Any) -> None:
        if isinstance(type_json, str):
            type_json = {"key": type_json}
        self.is_map = "value" in type_json
        low, high = type_json.get("min", 1), type_json.get("max", 1)
        self.scalar = not self.is_map and low == 1 and high == 1
        self.key_ref = _ref_table(type_json["key"])
        self.value_ref = _ref_table(type_json.get("value"))


def _ref_table(base: Any) -> str | None:
    return base.get("refTable") if isinstance(base, dict) else None


class Table:
    __slots__ = ("name", "rows")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[uuid.UUID, Row] = {}


class Row:
    """A row of the snapshot; a column's value is made when first read."""

    __slots__ = ("uuid", "_raw", "_columns", "_tables", "_made")

    def __init__(self, row_uuid: uuid.UUID, raw: dict, columns: Mapping[str, Column],
                 tables: Mapping[str, Table]) -> None:
        self.uuid = row_uuid
        self._raw = raw
        self._columns = columns
        self._tables = tables
        self._made: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)    # a slot not set yet (copy, pickle): no column
        made = self._made
        if name in made:
            return made[name]
        column = self._columns.get(name)
        if column is None:
            raise AttributeError(f"{name!r} is not a column read by the snapshot")
        value = made[name] = _value(column, self._raw.get(name), self._tables)
        return value

    def __repr__(self) -> str:
        return f"<snapshot row {self.uuid}>"


def _atom(json_atom: Any, ref: str | None, tables: Mapping[str, Table]) -> Any:
    if isinstance(json_atom, list) and len(json_atom) == 2 and json_atom[0] == "uuid":
        row_uuid = uuid.UUID(json_atom[1])
        if ref is None:
            return row_uuid
        table = tables.get(ref)
        return table.rows.get(row_uuid) if table is not None else None
    return json_atom


def _value(column: Column, datum: Any, tables: Mapping[str, Table]) -> Any:
    if column.is_map:
        pairs = datum[1] if isinstance(datum, list) and datum[:1] == ["map"] else []
        return {_atom(k, column.key_ref, tables): _atom(v, column.value_ref, tables)
                for k, v in pairs}
    if isinstance(datum, list) and datum[:1] == ["set"]:
        atoms = datum[1]
    elif datum is None:
        atoms = []
    else:
        atoms = [datum]
    values = [_atom(a, column.key_ref, tables) for a in atoms]
    if column.key_ref is not None:
        values = [v for v in values if v is not None]   # a reference to a row not read
    if column.scalar:
        return values[0] if values else None
    return values


def read(spec: LeafSpec, timeout: float) -> dict[str, Table]:
    """Every replicated table of the leaf (``COLUMNS``), read in one transaction
    within ``timeout`` (:class:`LeafUnreachable` otherwise)."""
    if spec.ssl is not None and spec.ovsdb.startswith("ssl:"):
        _use_ssl_files(spec.name, spec.ssl)
    deadline = time.monotonic() + timeout
    schema = fetch_schema(spec, timeout)["tables"]
    try:
        columns = {table: {name: Column(schema[table]["columns"][name]["type"])
                           for name in names} for table, names in COLUMNS.items()}
    except KeyError as exc:
        raise FabricError(f"leaf {spec.name}: its {SCHEMA} schema has no {exc}") from None
    ops: list[Any] = [SCHEMA] + [
        {"op": "select", "table": table, "where": [], "columns": ["_uuid", *names]}
        for table, names in COLUMNS.items()]
    answer = _request(spec, "transact", ops, max(0.1, deadline - time.monotonic()),
                      "refused to be read")
    tables = {table: Table(table) for table in COLUMNS}
    if not isinstance(answer, list) or len(answer) != len(COLUMNS):
        raise FabricError(f"leaf {spec.name}: {len(COLUMNS)} tables asked, answer: "
                          f"{str(answer)[:200]}")
    for table, reply in zip(COLUMNS, answer):
        if not isinstance(reply, dict) or "rows" not in reply:
            raise FabricError(f"leaf {spec.name}: reading {table}: {reply}")
        rows = tables[table].rows
        for raw in reply["rows"]:
            row_uuid = uuid.UUID(raw["_uuid"][1])
            rows[row_uuid] = Row(row_uuid, raw, columns[table], tables)
    return tables
