"""An independent observer of the lab's leaves: when did a binding or a MAC change?

Used by the benchmarks to time convergence without trusting the code under test:
one python-ovs IDL per leaf (not the project's backend), following
``Physical_Port.vlan_bindings``, the logical switches they point at, and the remote
MACs with their locators, noting the monotonic time of each change.
"""
from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import ovs.db.idl
import ovs.poller

from networking_dvs_fabric.fabric import ovs_json

# The observer shares a CPU with the worker and the leaves in pinned benchmarks: its
# updates are parsed by the standard library's JSON decoder, not character by
# character in Python (python-ovs here has no C parser; ``fabric/ovs_json.py``).
ovs_json.install()

VTEP_SCHEMA = Path("/usr/share/openvswitch/vtep.ovsschema")


class LeafWatch:
    def __init__(self, leaves: dict[str, str]) -> None:
        """``leaves``: leaf name -> OVSDB endpoint (tcp:HOST:PORT)."""
        self._leaves = dict(leaves)
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], float] = {}
        self._present: dict[str, set[tuple[str, str, str]]] = {name: set() for name in leaves}
        self._appeared: dict[tuple[str, str, str], float] = {}
        self._vanished: dict[tuple[str, str, str], float] = {}
        # (leaf, switch, MAC) -> (tunnel IP it points at, since when)
        self._macs: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced = {name: threading.Event() for name in leaves}

    def start(self, timeout: float = 15.0) -> "LeafWatch":
        for name, endpoint in self._leaves.items():
            thread = threading.Thread(target=self._follow, args=(name, endpoint),
                                      name=f"leaf-watch-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for name, event in self._synced.items():
            if not event.wait(timeout):
                self.stop()
                raise TimeoutError(f"leaf {name}: no OVSDB sync within {timeout} s")
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def first_seen(self, leaf: str, port: str, switch: str) -> float | None:
        with self._lock:
            return self._seen.get((leaf, port, switch))

    def all_seen(self, wanted: list[tuple[str, str, str]]) -> float | None:
        """Time the last of ``wanted`` bindings appeared; None while one is missing."""
        with self._lock:
            times = [self._seen.get(key) for key in wanted]
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def all_present_since(self, wanted: list[tuple[str, str, str]]) -> float | None:
        """Time the last of ``wanted`` bindings (last) appeared, if all are on their
        leaves now; None while one is missing (unlike ``all_seen``, a binding that
        came and went does not count)."""
        with self._lock:
            if not all(key in self._present[key[0]] for key in wanted):
                return None
            return max((self._appeared[key] for key in wanted), default=time.monotonic())

    def all_gone(self, wanted: list[tuple[str, str, str]]) -> bool:
        """True once none of ``wanted`` bindings is on its leaf any more."""
        with self._lock:
            return not any(key in self._present[key[0]] for key in wanted)

    def present(self, key: tuple[str, str, str]) -> bool:
        with self._lock:
            return key in self._present[key[0]]

    def appeared_at(self, key: tuple[str, str, str]) -> float | None:
        """When the binding last appeared (None: never, or absent now)."""
        with self._lock:
            return self._appeared.get(key) if key in self._present[key[0]] else None

    def vanished_at(self, key: tuple[str, str, str]) -> float | None:
        """When the binding last went away (None: never, or present now)."""
        with self._lock:
            return None if key in self._present[key[0]] else self._vanished.get(key)

    def mac(self, leaf: str, switch: str, mac: str) -> tuple[str, float] | None:
        """(tunnel IP, since) of a remote MAC on a leaf, or None."""
        with self._lock:
            return self._macs.get((leaf, switch, mac.lower()))

    def _follow(self, name: str, endpoint: str) -> None:
        helper = ovs.db.idl.SchemaHelper(location=str(VTEP_SCHEMA))
        helper.register_columns("Logical_Switch", ["name"])
        helper.register_columns("Physical_Port", ["name", "vlan_bindings"])
        helper.register_columns("Ucast_Macs_Remote", ["MAC", "logical_switch", "locator"])
        helper.register_columns("Physical_Locator", ["dst_ip"])
        idl = _Replica(endpoint, helper)
        seqno = idl.change_seqno
        connection = None
        state = _LeafState()
        try:
            while not self._stop.is_set():
                idl.run()
                if idl.change_seqno != seqno:
                    seqno = idl.change_seqno
                    now = time.monotonic()
                    # A new connection reloads the replica without telling each row's
                    # change: read it whole once then; else only the rows that changed.
                    whole = idl.connection_seqno() != connection
                    connection = idl.connection_seqno()
                    self._note(name, idl, state, now, whole)
                    if idl.has_ever_connected():
                        self._synced[name].set()
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.timer_wait(100)
                poller.block()
        finally:
            idl.close()

    def _note(self, leaf: str, idl: "_Replica", state: "_LeafState", now: float,
              whole: bool) -> None:
        ports, macs = idl.take_changed()
        if whole:
            state.clear()
            ports = set(idl.tables["Physical_Port"].rows)
            macs = set(idl.tables["Ucast_Macs_Remote"].rows)
        appeared, vanished = state.ports_changed(leaf, idl.tables, ports)
        mac_changes = state.macs_changed(leaf, idl.tables, macs)
        with self._lock:
            present = self._present[leaf]
            for key in appeared:
                self._seen.setdefault(key, now)
                if key not in present:
                    present.add(key)
                    self._appeared[key] = now
            for key in vanished:
                if key in present:
                    present.discard(key)
                    self._vanished[key] = now
            for key, ip in mac_changes.items():
                if ip is None:
                    self._macs.pop(key, None)
                elif self._macs.get(key, ("", 0.0))[0] != ip:
                    self._macs[key] = (ip, now)
            if whole:
                # Rows gone while the connection was down: nothing told of them.
                for key in [k for k in present if k not in state.bound]:
                    present.discard(key)
                    self._vanished[key] = now
                for key in [k for k in self._macs if k[0] == leaf and k not in state.mac_keys]:
                    del self._macs[key]


class _Replica(ovs.db.idl.Idl):
    """The IDL, noting which rows each update changed: the observer's cost follows
    what changed, not what the leaf holds (at 4,000 networks a full look at every
    binding and MAC on each update took the CPU the worker needs in pinned runs)."""

    def __init__(self, remote: str, helper: ovs.db.idl.SchemaHelper) -> None:
        super().__init__(remote, helper)
        self._changed: dict[str, set] = {"Physical_Port": set(), "Ucast_Macs_Remote": set()}

    def notify(self, event, row, updates=None) -> None:
        changed = self._changed.get(row._table.name)
        if changed is not None:
            changed.add(row.uuid)

    def take_changed(self) -> tuple[set, set]:
        ports, macs = self._changed["Physical_Port"], self._changed["Ucast_Macs_Remote"]
        self._changed = {"Physical_Port": set(), "Ucast_Macs_Remote": set()}
        return ports, macs

    def connection_seqno(self) -> int:
        return self._session.get_seqno()


class _LeafState:
    """What one leaf held at its last update: each port's raw (VLAN, switch uuid)
    bindings with the key each made, and each remote MAC row's key and locator."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.port_bindings: dict = {}       # port uuid -> {(VLAN, LS uuid): key}
        self.bound: collections.Counter = collections.Counter()   # key -> bindings
        self.mac_rows: dict = {}            # MAC row uuid -> key
        self.mac_keys: collections.Counter = collections.Counter()

    def ports_changed(self, leaf: str, tables, changed: set) -> tuple[list, list]:
        rows, switches = tables["Physical_Port"].rows, tables["Logical_Switch"].rows
        appeared, vanished = [], []
        for port_uuid in changed:
            row = rows.get(port_uuid)
            before = self.port_bindings.pop(port_uuid, {})
            now = _raw_map(row, "vlan_bindings") if row is not None else {}
            kept = {pair: key for pair, key in before.items() if pair in now}
            for pair, key in before.items():
                if pair not in now:
                    self.bound[key] -= 1
                    if not self.bound[key]:
                        del self.bound[key]
                        vanished.append(key)
            for pair in now.keys() - kept.keys():
                switch = switches.get(pair[1])
                if switch is None:
                    continue            # not in this replica (yet)
                key = kept[pair] = (leaf, row.name, switch.name)
                self.bound[key] += 1
                if self.bound[key] == 1:
                    appeared.append(key)
            if kept:
                self.port_bindings[port_uuid] = kept
        return appeared, vanished

    def macs_changed(self, leaf: str, tables, changed: set) -> dict:
        """(leaf, switch, MAC) -> tunnel IP now (None: gone)."""
        rows = tables["Ucast_Macs_Remote"].rows
        out: dict = {}
        for row_uuid in changed:
            old = self.mac_rows.pop(row_uuid, None)
            if old is not None:
                self.mac_keys[old] -= 1
                if not self.mac_keys[old]:
                    del self.mac_keys[old]
                    out.setdefault(old, None)
            row = rows.get(row_uuid)
            if row is None:
                continue
            key = (leaf, _one(row.logical_switch).name, row.MAC.lower())
            self.mac_rows[row_uuid] = key
            self.mac_keys[key] += 1
            out[key] = _one(row.locator).dst_ip
        return out


def _raw_map(row, column: str) -> dict:
    """A map column's (key, value) pairs as the replica holds them (a reference as its
    uuid), without making a Row of every referenced row."""
    datum = row._data.get(column)
    return {} if datum is None else {
        (key.value, value.value): None for key, value in datum.values.items()}


def _one(value):
    """A required single reference is a Row; tolerate the list form too."""
    return value[0] if isinstance(value, list) else value
