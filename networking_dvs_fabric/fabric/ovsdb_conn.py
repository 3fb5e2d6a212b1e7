"""One OVSDB ``hardware_vtep`` connection per leaf, opened lazily, over ovsdbapp.

Why this module exists: ovsdbapp keeps the connection of an API *class* in the
class attribute ``_ovsdb_connection`` and only ever sets it once, so a second
``HwVtepApiIdlImpl(connection)`` in the same process silently talks to the
first leaf.  :class:`_LeafApi` stores the connection on the instance instead,
and :class:`LeafConnection` owns one such API, its IDL and its thread.

The IDL reconnects and resyncs by itself after the server goes away; before
each use we wait (bounded by ``connect_timeout``) until it is connected and its
monitor is installed again, and raise :class:`LeafUnreachable` otherwise, so a
caller never mistakes a disconnected, empty or stale replica for the leaf.

Each IDL also follows the leaf's identity - the uuid of its Physical_Switch row, new
when the switch's database was remade (a replaced or reset switch) - after every
update it applies, and calls the connection's ``on_identity`` when it changes, from
the IDL's own thread: the fabric worker wakes up then instead of finding out at its
next housekeeping.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from ovs import jsonrpc
from ovs import poller
from ovs import stream
from ovsdbapp.backend.ovs_idl import connection as ovsdbapp_conn
from ovsdbapp.backend.ovs_idl import idlutils
from ovsdbapp.schema.hardware_vtep import impl_idl

from networking_dvs_fabric.fabric.api import (FabricError, LeafSpec, LeafUnreachable,
                                              SslFiles)
from networking_dvs_fabric.fabric.leaf_index import LeafIndex
from networking_dvs_fabric.fabric import ovs_json
from networking_dvs_fabric.fabric.leaf_view import find_switch

LOG = logging.getLogger(__name__)
ovs_json.install()      # python-ovs without its C parser: messages parsed by json

SCHEMA = "hardware_vtep"
# The columns the backend reads or writes; the rest of the schema is not replicated.
# Not the switch's own MAC tables (Ucast_Macs_Local, Mcast_Macs_Local): they grow with
# what the switch learns, and the backend only needs to know, before it deletes a
# logical switch, whether a local MAC still refers to it - asked of the leaf then
# (``local_mac_refs``).
COLUMNS: dict[str, tuple[str, ...]] = {
    "Physical_Switch": ("name", "ports"),
    "Physical_Port": ("name", "vlan_bindings"),
    "Logical_Switch": ("name", "tunnel_key", "replication_mode", "other_config"),
    "Physical_Locator": ("dst_ip", "encapsulation_type", "tunnel_key"),
    "Physical_Locator_Set": ("locators",),
    "Ucast_Macs_Remote": ("MAC", "logical_switch", "locator"),
    "Mcast_Macs_Remote": ("MAC", "logical_switch", "locator_set"),
}
TABLES = tuple(COLUMNS)
# Rows of the switch's own that refer to a logical switch and keep it from going.
LOCAL_MAC_TABLES = ("Ucast_Macs_Local", "Mcast_Macs_Local")
_SCHEMES = ("tcp", "ssl", "unix")
MIN_BACKOFF_MS = 250
# python-ovs keeps the SSL files in class attributes of ovs.stream.Stream: one
# set per process.  Remember which leaf set them to refuse a conflicting one.
_ssl_lock = threading.Lock()
_ssl_owner: dict[str, Any] = {}


def check_endpoint(spec: LeafSpec) -> None:
    """Refuse an endpoint this backend cannot open, naming the leaf."""
    scheme, _, rest = spec.ovsdb.partition(":")
    if scheme not in _SCHEMES or not rest:
        raise FabricError(f"leaf {spec.name}: unsupported OVSDB endpoint {spec.ovsdb!r} "
                          "(tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH)")
    if scheme in ("tcp", "ssl") and not rest.rpartition(":")[2].isdigit():
        raise FabricError(f"leaf {spec.name}: {spec.ovsdb!r} has no port")
    if scheme == "ssl" and spec.ssl is None:
        raise FabricError(f"leaf {spec.name}: {spec.ovsdb!r} needs LeafSpec.ssl "
                          "(private key, certificate, CA certificate)")


def _use_ssl_files(leaf: str, files: SslFiles) -> None:
    """Point python-ovs at ``files``; it has one global set, so refuse others."""
    with _ssl_lock:
        current = _ssl_owner.get("files")
        if current is not None and current != files:
            raise FabricError(
                f"leaf {leaf}: python-ovs supports one SSL key/certificate/CA set per "
                f"process and leaf {_ssl_owner['leaf']} already uses another one")
        stream.Stream.ssl_set_private_key_file(files.private_key)
        stream.Stream.ssl_set_certificate_file(files.certificate)
        stream.Stream.ssl_set_ca_cert_file(files.ca_cert)
        _ssl_owner.update(files=files, leaf=leaf)


def fetch_schema(spec: LeafSpec, timeout: float) -> dict:
    """The leaf's ``hardware_vtep`` schema, asked with ``get_schema`` within ``timeout``.

    ovsdbapp's ``get_schema_helper`` blocks without a deadline; a leaf that
    drops packets must not hang the caller.
    """
    return _request(spec, "get_schema", [SCHEMA], timeout, f"has no {SCHEMA} database")


def local_mac_refs(spec: LeafSpec, ls_uuids: Iterable[uuid.UUID],
                   timeout: float) -> set[uuid.UUID]:
    """Those of the logical switches a local MAC of the switch still refers to.

    One ``select`` per logical switch and table, in one read-only transaction on a
    connection of its own (the IDL does not replicate these tables).
    """
    wanted = sorted(set(ls_uuids))
    if not wanted:
        return set()
    ops: list[Any] = [SCHEMA]
    for table in LOCAL_MAC_TABLES:
        ops += [{"op": "select", "table": table, "columns": ["_uuid"],
                 "where": [["logical_switch", "==", ["uuid", str(ls)]]]} for ls in wanted]
    result = _request(spec, "transact", ops, timeout, "refused to list its local MACs")
    found = set()
    for index, reply in enumerate(result):
        if isinstance(reply, dict) and reply.get("error"):
            raise FabricError(f"leaf {spec.name}: listing its local MACs: {reply}")
        if isinstance(reply, dict) and reply.get("rows"):
            found.add(wanted[index % len(wanted)])
    return found


def _request(spec: LeafSpec, method: str, params: list, timeout: float,
             refused: str) -> Any:
    """One JSON-RPC request on a connection of its own, answered within ``timeout``."""
    deadline = time.monotonic() + timeout
    err, strm = stream.Stream.open_block(stream.Stream.open(spec.ovsdb),
                                         int(timeout * 1000))
    if err:
        raise _unreachable(spec, os.strerror(err), err)
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request(method, params)
        err = rpc.send(request)
        while not err:
            rpc.run()
            err, msg = rpc.recv()
            if err == errno.EAGAIN:
                err = _wait_rpc(rpc, deadline)
                continue
            if not err and msg.id == request.id:
                if msg.error:
                    raise FabricError(f"leaf {spec.name}: {spec.ovsdb} {refused}: "
                                      f"{msg.error}")
                return msg.result
        raise _unreachable(spec, os.strerror(err) if err > 0 else "connection closed",
                           err if err > 0 else 0)
    finally:
        rpc.close()


def _wait_rpc(rpc: jsonrpc.Connection, deadline: float) -> int:
    """Block until ``rpc`` may have input or ``deadline``; ETIMEDOUT after it."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return errno.ETIMEDOUT
    waiter = poller.Poller()
    rpc.wait(waiter)
    rpc.recv_wait(waiter)
    waiter.timer_wait(int(remaining * 1000) + 1)
    waiter.block()
    return 0


# Errors that say nothing about TLS: the leaf is simply not there (yet).
_NOT_TLS = {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
            errno.ECONNRESET}


def _unreachable(spec: LeafSpec, why: str, err: int = 0) -> LeafUnreachable:
    if spec.ssl is not None and spec.ovsdb.startswith("ssl:") and err not in _NOT_TLS:
        # python-ovs reports a failed certificate check as a bare errno (EPERM,
        # EPROTO, or the connection closing): say what it means.
        why = (f"SSL handshake failed ({why}): the leaf's certificate did not verify "
               f"against ca_cert {spec.ssl.ca_cert}, or the leaf refused our certificate "
               f"{spec.ssl.certificate}")
    return LeafUnreachable(f"leaf {spec.name} at {spec.ovsdb}: {why}")


class _LeafIdl(ovsdbapp_conn.OvsdbIdl):
    """An IDL that wakes waiters after every ``run()`` (connect, sync, update) and
    keeps its :class:`LeafIndex` current."""

    def __init__(self, leaf: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leaf = leaf
        self.changed = threading.Condition()
        self.index = LeafIndex()
        self._index_seqno = -1
        self._green = _green_threads()
        # The Physical_Switch row's uuid as of the last update applied while synced
        # (None: none yet); ``on_identity`` is called when it becomes another one.
        self.identity: str | None = None
        self._switch_rows: frozenset = frozenset()
        self.on_identity: Callable[[], None] | None = None

    def cooperative_yield(self) -> None:
        """ovsdbapp sleeps 0 s per row it parses, for eventlet's green threads.  With
        OS threads that hands the interpreter away on every row: in a busy process
        (the completer, other leaves, the watcher) a 600-row update then took
        seconds instead of a fraction.  The interpreter switches threads by itself."""
        if self._green:
            super().cooperative_yield()

    def run(self) -> bool:
        changed = super().run()
        seqno = self._session.get_seqno()
        if seqno != self._index_seqno:
            # Connected again: python-ovs may clear the replica and load it whole
            # without a notification per row it drops.
            self._index_seqno = seqno
            self.index.stale = True
        with self.changed:
            self.changed.notify_all()
        if self.ready():
            self._follow_identity()
        return bool(changed)

    def _follow_identity(self) -> None:
        """Note the switch row's uuid; its rows are looked at only when the table's
        set of rows changed (the keys alone: nothing else is read per update)."""
        rows = frozenset(self.tables["Physical_Switch"].rows)
        if rows == self._switch_rows:
            return
        self._switch_rows = rows
        try:
            identity: str | None = str(find_switch(self.tables, self.leaf).uuid)
        except FabricError:
            identity = None             # no switch row yet, or not one of ours
        if identity == self.identity:
            return
        self.identity = identity
        callback = self.on_identity
        if identity is not None and callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - never break the IDL's update processing
                LOG.exception("leaf %s: identity change not passed on", self.leaf)

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        try:
            self.index.notify(event, row)
        except Exception:  # noqa: BLE001 - never break the IDL's update processing
            LOG.exception("leaf index: %s of a %s row not followed; rebuilt at next use",
                          event, getattr(getattr(row, "_table", None), "name", "?"))
            self.index.stale = True
        super().notify(event, row, updates)

    def ready(self) -> bool:
        """Connected and monitoring, i.e. the replica is the server's current state."""
        # python-ovs has no public "connected" query on Idl; the session has.
        return bool(self._session.is_connected()) and self.state == self.IDL_S_MONITORING

    def set_max_backoff(self, seconds: float) -> None:
        """Reconnect at least every ``seconds`` (python-ovs' default is 8 s).

        The first try after a connection drops comes after ``MIN_BACKOFF_MS`` (python-ovs:
        1 s), then twice as long each time: a leaf restarted or replaced at once is
        back (and reprogrammed, if it came back empty) that much sooner."""
        max_ms = max(1000, int(seconds * 1000))
        self._session.reconnect.set_backoff(MIN_BACKOFF_MS, max_ms)


def _green_threads() -> bool:
    """Has eventlet replaced the threads of this process?"""
    try:
        from eventlet import patcher
    except ImportError:
        return False
    return bool(patcher.is_monkey_patched("thread"))


class _LeafApi(impl_idl.HwVtepApiIdlImpl):
    """The hardware_vtep API with the connection on the instance, not the class."""

    @property  # type: ignore[override]
    def ovsdb_connection(self) -> ovsdbapp_conn.Connection:
        return self._leaf_connection

    @ovsdb_connection.setter
    def ovsdb_connection(self, connection: ovsdbapp_conn.Connection) -> None:
        self._leaf_connection = connection


class LeafConnection:
    """The lazily opened OVSDB connection of one leaf."""

    def __init__(self, spec: LeafSpec, connect_timeout: float, txn_timeout: float) -> None:
        check_endpoint(spec)
        self.spec = spec
        self.connect_timeout = connect_timeout
        self.txn_timeout = txn_timeout
        self._lock = threading.Lock()
        self._api: _LeafApi | None = None
        self._on_identity: Callable[[], None] | None = None

    def on_identity(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` (from the connection's thread) whenever the leaf shows
        a new Physical_Switch row; it must be quick and must not use the leaf."""
        with self._lock:
            self._on_identity = callback
            if self._api is not None:
                self._api.idl.on_identity = callback

    def known_identity(self) -> str | None:
        """The leaf's identity as the open, synced replica has it; None when the
        connection is not open or not synced now.  Never waits, never connects."""
        api = self._api
        if api is None or not api.idl.ready():
            return None
        return api.idl.identity

    def is_open(self) -> bool:
        """A replica of the leaf is kept (opened by :meth:`api`, until :meth:`close`)."""
        return self._api is not None

    def api(self) -> _LeafApi:
        """The leaf's API, connected and synced; :class:`LeafUnreachable` if not in time."""
        with self._lock:
            if self._api is None:
                self._api = self._open()
            api = self._api
        self._wait_ready(api.idl)
        return api

    def _open(self) -> _LeafApi:
        """Fetch the schema, build the IDL and start its thread (bounded by connect_timeout)."""
        spec = self.spec
        if spec.ssl is not None and spec.ovsdb.startswith("ssl:"):
            _use_ssl_files(spec.name, spec.ssl)
        LOG.info("leaf %(leaf)s: connecting to %(ep)s", {"leaf": spec.name, "ep": spec.ovsdb})
        helper = idlutils.create_schema_helper(fetch_schema(spec, self.connect_timeout))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, list(columns))
        leaf_idl = _LeafIdl(spec.name, spec.ovsdb, helper)
        leaf_idl.on_identity = self._on_identity
        leaf_idl.set_max_backoff(self.connect_timeout / 4)
        conn = ovsdbapp_conn.Connection(leaf_idl, timeout=self.connect_timeout)
        try:
            api = _LeafApi(conn, start=False)
            conn.start()  # waits for the first full dump, up to conn.timeout
        except Exception as exc:
            conn.stop(timeout=1)
            leaf_idl.close()
            raise _unreachable(spec, f"no initial sync: {exc!r}", errno.ETIMEDOUT) from exc
        conn.timeout = self.txn_timeout  # from now on it bounds transactions
        return api

    def _wait_ready(self, leaf_idl: _LeafIdl) -> None:
        """Wait until the IDL is connected and synced, at most connect_timeout."""
        deadline = time.monotonic() + self.connect_timeout
        with leaf_idl.changed:
            while not leaf_idl.ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _unreachable(self.spec, "not connected after "
                                       f"{self.connect_timeout:g} s", errno.ETIMEDOUT)
                leaf_idl.changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        """Stop the IDL thread and drop the session; a later use opens a new one."""
        with self._lock:
            api, self._api = self._api, None
        if api is None:
            return
        if not api.ovsdb_connection.stop(timeout=self.txn_timeout):
            LOG.warning("leaf %s: connection thread did not stop", self.spec.name)
        LOG.info("leaf %s: connection closed", self.spec.name)
