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
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Any

from ovs import jsonrpc
from ovs import poller
from ovs import stream
from ovsdbapp.backend.ovs_idl import connection as ovsdbapp_conn
from ovsdbapp.backend.ovs_idl import idlutils
from ovsdbapp.schema.hardware_vtep import impl_idl

from networking_dvs_fabric.fabric.api import (FabricError, LeafSpec, LeafUnreachable,
                                              SslFiles)

LOG = logging.getLogger(__name__)

SCHEMA = "hardware_vtep"
# The tables the backend reads or writes; the rest of the schema is not replicated.
TABLES = ("Physical_Switch", "Physical_Port", "Logical_Switch", "Physical_Locator",
          "Physical_Locator_Set", "Ucast_Macs_Remote", "Mcast_Macs_Remote",
          "Ucast_Macs_Local", "Mcast_Macs_Local")
_SCHEMES = ("tcp", "ssl", "unix")
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
    deadline = time.monotonic() + timeout
    err, strm = stream.Stream.open_block(stream.Stream.open(spec.ovsdb),
                                         int(timeout * 1000))
    if err:
        raise _unreachable(spec, os.strerror(err), err)
    rpc = jsonrpc.Connection(strm)
    try:
        request = jsonrpc.Message.create_request("get_schema", [SCHEMA])
        err = rpc.send(request)
        while not err:
            rpc.run()
            err, msg = rpc.recv()
            if err == errno.EAGAIN:
                err = _wait_rpc(rpc, deadline)
                continue
            if not err and msg.id == request.id:
                if msg.error:
                    raise FabricError(f"leaf {spec.name}: {spec.ovsdb} has no "
                                      f"{SCHEMA} database: {msg.error}")
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
    """An IDL that wakes waiters after every ``run()`` (connect, sync, update)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changed = threading.Condition()

    def run(self) -> bool:
        changed = super().run()
        with self.changed:
            self.changed.notify_all()
        return bool(changed)

    def ready(self) -> bool:
        """Connected and monitoring, i.e. the replica is the server's current state."""
        # python-ovs has no public "connected" query on Idl; the session has.
        return bool(self._session.is_connected()) and self.state == self.IDL_S_MONITORING

    def set_max_backoff(self, seconds: float) -> None:
        """Reconnect at least every ``seconds`` (python-ovs' default is 8 s)."""
        max_ms = max(1000, int(seconds * 1000))
        self._session.reconnect.set_backoff(min(1000, max_ms), max_ms)


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
        for table in TABLES:
            helper.register_table(table)
        leaf_idl = _LeafIdl(spec.ovsdb, helper)
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
