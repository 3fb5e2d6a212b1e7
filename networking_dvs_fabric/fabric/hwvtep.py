"""The ``hardware_vtep`` fabric backend: leaves programmed over OVSDB with ovsdbapp.

A network on a leaf is a ``Logical_Switch`` named ``dvsf-<network id>`` whose
``other_config`` carries the project's marker, VLAN bindings on the leaf's
``Physical_Port`` rows pointing at it, ``Ucast_Macs_Remote`` rows for MACs
behind other leaves and one ``unknown-dst`` ``Mcast_Macs_Remote`` row (the
flooding list).  :meth:`HwvtepBackend.converge` reads the IDL replica for the named
networks only (``leaf_view.read_view``, through the replica's index: the cost is
the batch's, not the leaf's), plans the difference
(:func:`~networking_dvs_fabric.fabric.plan.plan`) and sends it as one OVSDB
transaction in which the plan is made again against the replica the transaction
really runs on (a retry after a reconnect re-plans, it never replays a stale diff).
A logical switch is deleted only after the leaf said that none of its own (learned)
MACs still refers to it: those tables are not replicated (``ovsdb_conn.COLUMNS``).
Rows without the marker are never changed.  This module holds the writer: the plan
into a transaction, and the backend.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any, Callable, Collection, Mapping, Sequence

from ovs.db import idl as ovs_idl
from ovsdbapp import exceptions as ovsdbapp_exc
from ovsdbapp.backend.ovs_idl import command

from networking_dvs_fabric.fabric.api import (DEPLOYMENT_KEY, MARKER_KEY, MARKER_VALUE,
                                              NETWORK_ID_KEY, ConvergeResult, FabricBackend,
                                              FabricError, LeafBusy, LeafRejected, LeafSpec,
                                              LeafUnreachable, NetworkOnLeaf)
from networking_dvs_fabric.fabric import leaf_snapshot
from networking_dvs_fabric.fabric.leaf_index import LeafIndex
from networking_dvs_fabric.fabric.leaf_view import (ENCAPSULATION, FLOOD_MAC, LS_PREFIX,
                                                    REPLICATION, Binding, LeafView, Row,
                                                    find_switch, network_on_leaf, read_view)
from networking_dvs_fabric.fabric.ovsdb_conn import LeafConnection, local_mac_refs
from networking_dvs_fabric.fabric.plan import Plan, plan

LOG = logging.getLogger(__name__)


class _Writer:
    """Writes a :class:`Plan` into one IDL transaction, creating rows in order."""

    def __init__(self, txn: ovs_idl.Transaction, tables: Mapping[str, Any],
                 view: LeafView) -> None:
        self._txn = txn
        self._tables = tables
        self._ls: dict[str, Row] = dict(view.owned)
        self._locators: dict[str, Row] = dict(view.locators)
        self._deployment = view.deployment

    def _insert(self, table: str, **columns: Any) -> Row:
        row = self._txn.insert(self._tables[table])
        for column, value in columns.items():
            setattr(row, column, value)
        return row

    def _locator(self, ip: str) -> Row:
        """The VXLAN locator for ``ip``: reused (it is indexed: no duplicates allowed)."""
        if ip not in self._locators:
            self._locators[ip] = self._insert("Physical_Locator", dst_ip=ip,
                                              encapsulation_type=ENCAPSULATION)
        return self._locators[ip]

    def write(self, todo: Plan) -> None:
        marker = {MARKER_KEY: MARKER_VALUE}
        if self._deployment is not None:
            marker[DEPLOYMENT_KEY] = self._deployment
        for ls in todo.adoptions:
            ls.setkey("other_config", DEPLOYMENT_KEY, self._deployment)
            self._ls[ls.other_config[NETWORK_ID_KEY]] = ls
        for network_id, vni in todo.new_ls:
            self._ls[network_id] = self._insert(
                "Logical_Switch", name=LS_PREFIX + network_id, tunnel_key=vni,
                replication_mode=REPLICATION,
                other_config={**marker, NETWORK_ID_KEY: network_id})
        for ls, vni in todo.vni_updates:
            ls.tunnel_key = vni
        for ls in todo.replication_updates:
            ls.replication_mode = REPLICATION
        for port, vlan, network_id in todo.bind_sets:
            # Verified: a (port, VLAN) another worker rebinds meanwhile must make
            # this transaction plan again, never be overwritten or unbound by it
            # (OVSDB deletes a map key whatever its value).
            port.verify("vlan_bindings")
            port.setkey("vlan_bindings", vlan, self._ls[network_id])
        for network_id, mac, ip in todo.ucast_new:
            self._insert("Ucast_Macs_Remote", MAC=mac, logical_switch=self._ls[network_id],
                         locator=self._locator(ip))
        for row, ip in todo.ucast_moves:
            row.locator = self._locator(ip)
        for network_id, row, ips in todo.flood_sets:
            # Locator sets are immutable: a changed list is a new set.
            locator_set = self._insert("Physical_Locator_Set",
                                       locators=[self._locator(ip) for ip in ips])
            if row is None:
                self._insert("Mcast_Macs_Remote", MAC=FLOOD_MAC, locator_set=locator_set,
                             logical_switch=self._ls[network_id])
            else:
                row.locator_set = locator_set
        for row in todo.ucast_dels + todo.flood_dels:
            row.delete()
        for port, vlan in todo.bind_dels:
            port.verify("vlan_bindings")
            port.delkey("vlan_bindings", vlan)
        for ls in todo.ls_dels:
            ls.delete()


def _plan(api: Any, leaf: str, desired: Mapping[str, NetworkOnLeaf | None],
          deployment: str | None, local: "_LocalMacs") -> tuple[LeafView, Plan]:
    """The plan for ``desired`` on the replica as it is now (connection lock held)."""
    view = read_view(api.tables, api.idl.index, leaf, deployment, desired)
    view.pinned |= local.refer
    todo = plan(view, desired)
    unasked = [ls for ls in todo.ls_dels if ls.uuid not in local.asked]
    if unasked:
        # The leaf was not asked about these (the replica changed since): keep them
        # for the next converge, which asks.
        todo.ls_dels = [ls for ls in todo.ls_dels if ls.uuid in local.asked]
        todo.pending |= {ls.other_config[NETWORK_ID_KEY] for ls in unasked}
    return view, todo


@dataclasses.dataclass(frozen=True)
class _LocalMacs:
    """Which logical switches the leaf was asked about (``asked``) and which of them
    a local MAC of the switch still refers to (``refer``)."""

    asked: frozenset[uuid.UUID] = frozenset()
    refer: frozenset[uuid.UUID] = frozenset()


class _ConvergeCommand(command.BaseCommand):
    """Plans and writes against the replica the transaction actually runs on."""

    def __init__(self, api: Any, leaf: str, desired: Mapping[str, NetworkOnLeaf | None],
                 deployment: str | None, local: _LocalMacs) -> None:
        super().__init__(api)
        self.leaf = leaf
        self.desired = desired
        self.deployment = deployment
        self.local = local

    def run_idl(self, txn: ovs_idl.Transaction) -> None:
        view, todo = _plan(self.api, self.leaf, self.desired, self.deployment, self.local)
        _Writer(txn, self.api.tables, view).write(todo)
        self.result = todo


class _AdoptCommand(command.BaseCommand):
    """Give legacy logical switches (marker, no deployment id) our id."""

    def __init__(self, api: Any, leaf: str, network_ids: set[str], deployment: str) -> None:
        super().__init__(api)
        self.leaf, self.network_ids, self.deployment = leaf, network_ids, deployment

    def run_idl(self, txn: ovs_idl.Transaction) -> None:
        view = read_view(self.api.tables, self.api.idl.index, self.leaf, self.deployment,
                         self.network_ids)
        adopted = sorted(n for n in self.network_ids if n in view.legacy)
        for network_id in adopted:
            view.legacy[network_id].setkey("other_config", DEPLOYMENT_KEY, self.deployment)
        self.result = adopted


# OVSDB's words when a transaction would duplicate a row of a table with an index.
_CONCURRENT_WRITER = "identical values"


def _others(view: LeafView) -> dict[str, str | None]:
    found: dict[str, str | None] = {n: None for n in view.legacy}
    found.update({n: ls.other_config.get(DEPLOYMENT_KEY) for n, ls in view.foreign.items()})
    return found


class HwvtepBackend(FabricBackend):
    """Every leaf of the topology over its own lazily opened OVSDB connection."""

    def __init__(self, leaves: Sequence[LeafSpec], connect_timeout: float = 10.0,
                 txn_timeout: float = 30.0,
                 deployment: Callable[[], str | None] = lambda: None) -> None:
        # This deployment's id, read when first needed (it is in Neutron's database);
        # None: every marked logical switch is taken for ours (tools, tests).
        self._deployment = deployment
        self._leaves: dict[str, LeafConnection] = {}
        for spec in leaves:
            if spec.name in self._leaves:
                raise FabricError(f"leaf {spec.name} listed twice")
            self._leaves[spec.name] = LeafConnection(spec, connect_timeout, txn_timeout)

    def _connection(self, leaf: str) -> LeafConnection:
        try:
            return self._leaves[leaf]
        except KeyError:
            raise FabricError(f"unknown leaf {leaf!r}") from None

    def converge(self, leaf: str,
                 desired: Mapping[str, NetworkOnLeaf | None]) -> ConvergeResult:
        conn = self._connection(leaf)
        api = conn.api()
        deployment = self._deployment()
        local = _LocalMacs()
        with api.ovsdb_connection.lock:
            todo = plan(read_view(api.tables, api.idl.index, leaf, deployment, desired),
                        desired)
        if todo.ls_dels:
            asked = frozenset(ls.uuid for ls in todo.ls_dels)
            local = _LocalMacs(asked, frozenset(local_mac_refs(conn.spec, asked,
                                                               conn.connect_timeout)))
            with api.ovsdb_connection.lock:
                todo = _plan(api, leaf, desired, deployment, local)[1]
        result = ConvergeResult(leaf=leaf, switch_removal_pending=set(todo.pending))
        if not todo.changes:
            LOG.debug("leaf %(leaf)s: %(n)d networks already converged",
                      {"leaf": leaf, "n": len(desired)})
            return result
        started = time.monotonic()
        sent = self._commit(conn, api, desired, deployment, local)
        result.transactions = 1
        if sent is not None:
            result.changes = sent.changes
            result.switch_removal_pending = set(sent.pending)
        LOG.info("leaf %(leaf)s: %(changes)d changes for %(n)d networks in one "
                 "transaction, %(ms).0f ms", {"leaf": leaf, "changes": result.changes,
                                              "n": len(desired),
                                              "ms": (time.monotonic() - started) * 1000})
        return result

    def _commit(self, conn: LeafConnection, api: Any,
                desired: Mapping[str, NetworkOnLeaf | None], deployment: str | None,
                local: _LocalMacs) -> Plan | None:
        """Send the one transaction; map ovsdbapp's errors onto the fabric's."""
        leaf, endpoint = conn.spec.name, conn.spec.ovsdb
        cmd = _ConvergeCommand(api, leaf, desired, deployment, local)
        try:
            with api.transaction(check_error=True, log_errors=False) as txn:
                txn.add(cmd)
        except FabricError:
            raise
        except ovsdbapp_exc.TimeoutException as exc:
            raise LeafUnreachable(f"leaf {leaf} at {endpoint}: transaction timed out "
                                  f"({exc})") from exc
        except RuntimeError as exc:
            if "timed out" in str(exc):
                raise LeafUnreachable(f"leaf {leaf} at {endpoint}: {exc}") from exc
            if _CONCURRENT_WRITER in str(exc):
                # Another worker process wrote the same row (e.g. a locator for the same
                # tunnel IP) just before us, and our replica had not seen it yet.
                raise LeafBusy(f"leaf {leaf} at {endpoint}: {exc}") from exc
            LOG.warning("leaf %(leaf)s rejected the transaction: %(err)s",
                        {"leaf": leaf, "err": exc})
            raise LeafRejected(f"leaf {leaf} at {endpoint}: {exc}") from exc
        return cmd.result

    def read(self, leaf: str, network_ids: Collection[str] | None = None,
             holding: Collection[Binding] = ()) -> dict[str, NetworkOnLeaf]:
        api = self._connection(leaf).api()
        with api.ovsdb_connection.lock:
            view = read_view(api.tables, api.idl.index, leaf, self._deployment(),
                             network_ids, holding)
            return {nid: network_on_leaf(view, nid, ls) for nid, ls in view.owned.items()}

    def others(self, leaf: str) -> dict[str, str | None]:
        api = self._connection(leaf).api()
        with api.ovsdb_connection.lock:
            return _others(read_view(api.tables, api.idl.index, leaf, self._deployment()))

    def database_of(self, leaf: str) -> str:
        return self._connection(leaf).spec.ovsdb

    def read_all(self, leaf: str) -> tuple[dict[str, NetworkOnLeaf], dict[str, str | None]]:
        """From the replica when one is kept; else from one ``select`` of the leaf
        (``leaf_snapshot``), without opening a replica for a single read."""
        conn = self._connection(leaf)
        if conn.is_open():
            return super().read_all(leaf)
        tables = leaf_snapshot.read(conn.spec, conn.connect_timeout)
        view = read_view(tables, LeafIndex(), leaf, self._deployment())
        return ({nid: network_on_leaf(view, nid, ls) for nid, ls in view.owned.items()},
                _others(view))

    def adopt(self, leaf: str, network_ids: set[str]) -> list[str]:
        deployment = self._deployment()
        if deployment is None or not network_ids:
            return []
        api = self._connection(leaf).api()
        cmd = _AdoptCommand(api, leaf, set(network_ids), deployment)
        try:
            with api.transaction(check_error=True, log_errors=False) as txn:
                txn.add(cmd)
        except ovsdbapp_exc.TimeoutException as exc:
            raise LeafUnreachable(f"leaf {leaf}: adopting switches timed out ({exc})") from exc
        except RuntimeError as exc:
            raise LeafRejected(f"leaf {leaf}: adopting switches: {exc}") from exc
        if cmd.result:
            LOG.info("leaf %(leaf)s: %(n)d logical switches of an earlier version adopted by "
                     "deployment %(dep)s", {"leaf": leaf, "n": len(cmd.result),
                                            "dep": deployment})
        return list(cmd.result or [])

    def ports(self, leaf: str) -> set[str]:
        api = self._connection(leaf).api()
        with api.ovsdb_connection.lock:
            return {p.name for p in find_switch(api.tables, leaf).ports}

    def identity(self, leaf: str) -> str | None:
        """The uuid of the leaf's Physical_Switch row: new when its database was remade."""
        api = self._connection(leaf).api()
        with api.ovsdb_connection.lock:
            return str(find_switch(api.tables, leaf).uuid)

    def known_identity(self, leaf: str) -> str | None:
        """:meth:`identity` as the leaf's open, synced connection knows it now, from
        memory: None when it is not open or not synced (never waits, never connects)."""
        return self._connection(leaf).known_identity()

    def on_identity_change(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback(leaf)`` whenever a leaf's connection sees a new identity
        (its first one too), from that connection's thread: keep it quick."""
        for name, conn in self._leaves.items():
            conn.on_identity(None if callback is None else
                             (lambda leaf=name: callback(leaf)))

    def close(self) -> None:
        for conn in self._leaves.values():
            conn.close()

