"""An independent observer of the lab's leaves: when did a binding or a MAC change?

Used by the benchmarks to time convergence without trusting the code under test:
one python-ovs IDL per leaf (not the project's backend), following
``Physical_Port.vlan_bindings``, the logical switches they point at, and the remote
MACs with their locators, noting the monotonic time of each change.
"""
from __future__ import annotations

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
        idl = ovs.db.idl.Idl(endpoint, helper)
        seqno = idl.change_seqno
        try:
            while not self._stop.is_set():
                idl.run()
                if idl.change_seqno != seqno:
                    seqno = idl.change_seqno
                    now = time.monotonic()
                    self._note(name, idl, now)
                    if idl.has_ever_connected():
                        self._synced[name].set()
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.timer_wait(100)
                poller.block()
        finally:
            idl.close()

    def _note(self, leaf: str, idl: ovs.db.idl.Idl, now: float) -> None:
        found = set()
        for port in idl.tables["Physical_Port"].rows.values():
            for switch in port.vlan_bindings.values():
                found.add((leaf, port.name, switch.name))
        macs = {}
        for row in idl.tables["Ucast_Macs_Remote"].rows.values():
            switch, locator = _one(row.logical_switch).name, _one(row.locator).dst_ip
            macs[(leaf, switch, row.MAC.lower())] = locator
        with self._lock:
            before = self._present[leaf]
            for key in found - before:
                self._appeared[key] = now
            for key in before - found:
                self._vanished[key] = now
            for key in found:
                self._seen.setdefault(key, now)
            self._present[leaf] = found
            for key in [k for k in self._macs if k[0] == leaf and k not in macs]:
                del self._macs[key]
            for key, ip in macs.items():
                if self._macs.get(key, ("", 0.0))[0] != ip:
                    self._macs[key] = (ip, now)


def _one(value):
    """A required single reference is a Row; tolerate the list form too."""
    return value[0] if isinstance(value, list) else value
