"""Telling Neutron that the leaves carry a port, on a thread of its own.

Lifting a port's provisioning block makes ML2 update its status
(``_port_provisioned``): 80-300 ms a port, nearly all of it Neutron's own (the
status transaction, the port's binding levels, the agents' notification).  Done
inline, a batch of 200 networks held the next batch's leaves back by 15-60 s; after
a worker outage, 1,000 networks waited minutes for their leaves.  So the fabric
worker's thread only finds which ports its batch made carried
(``provisioning.carried_ports``) and hands them here; this thread lifts the blocks
(``provisioning.complete``), a few ports at a time, and before each port it gives way
while the fabric worker handles a batch or runs its housekeeping (the full sync)
(``busy``): the leaves come first.

Nothing is lost: a network whose ports could not be told (the database away, ML2's
update swallowed) gets a journal row (retried by the fabric worker, which converges
with no changes and hands its ports here again); and when the process dies with
ports still queued, the next worker's start records a row for every network with a
port that still holds our block and no row pending (``provisioning.networks_waiting``);
a port whose block was lifted but whose status update never ran (the process died
between Neutron's two transactions) gets the block back first
(``provisioning.hold_stranded``).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator, Mapping

from neutron_lib import context as n_context

from networking_dvs_fabric import names
from networking_dvs_fabric.fabric import provisioning
from networking_dvs_fabric.fabric.intent import BoundPort
from networking_dvs_fabric.journal import store

LOG = logging.getLogger(__name__)
OPERATION = "provisioning"     # the journal rows' operation hint
RETRY_DELAY = 1.0
RECOVER_RETRY = 10.0     # the start's recovery, while the database does not answer
# Ports told at once (``provisioning.complete``): ML2's status update is mostly waits
# on the database, so a few side by side overlap them.
PARALLEL = 4


class Completer:
    """A queue of carried ports and the thread that tells Neutron about them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: dict[str, tuple[BoundPort, str]] = {}   # port id -> (port, network)
        self._busy = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.told = 0                  # ports handed to ML2 (for tests and logs)

    # -- the fabric worker's side ------------------------------------------------
    def submit(self, ports: Mapping[str, BoundPort], network_of: Mapping[str, str]) -> None:
        with self._lock:
            for port_id, port in ports.items():
                self._queue[port_id] = (port, network_of[port_id])
            self._lock.notify_all()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """While a batch is handled, completions wait (at most the ports under way:
        ``PARALLEL``)."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    # -- the thread ----------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="dvs-fabric-completer",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _take(self) -> dict[str, tuple[BoundPort, str]] | None:
        """Everything queued, once there is something; None: stopping."""
        with self._lock:
            while not self._stopping and not self._queue:
                self._lock.wait(1.0)
            if self._stopping:
                return None
            taken, self._queue = self._queue, {}
            return taken

    def _give_way(self) -> None:
        """Before each port: wait while the fabric worker handles a batch."""
        with self._lock:
            while self._busy and not self._stopping:
                self._lock.wait(1.0)
            if self._stopping:
                raise _Stopping()

    def _loop(self) -> None:
        context = n_context.get_admin_context()
        self._recover(context)
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self.run(context, taken)
            except _Stopping:
                return       # what is left holds its block: the next start finds it
            except Exception:  # noqa: BLE001 - the thread must go on
                LOG.exception("fabric: telling Neutron about %d carried port(s) failed; "
                              "their networks are converged again", len(taken))
                self._retry(context, {network for _, network in taken.values()})

    def _recover(self, context) -> None:
        """Journal rows for the networks a dead process left with blocked ports (and
        our block back on ports it left DOWN with none); tried again every
        ``RECOVER_RETRY`` s while the database does not answer - nothing else would
        look at those ports again."""
        while not self._stopping:
            try:
                stranded = provisioning.hold_stranded(context)
                waiting = provisioning.networks_waiting(context)
                self._retry(context, waiting, delay=0.0)
                break
            except Exception:  # noqa: BLE001 - the database may be away at start
                LOG.exception("fabric: could not look for ports left DOWN by a worker "
                              "that died; trying again in %.0f s", RECOVER_RETRY)
                with self._lock:
                    self._lock.wait(RECOVER_RETRY)
        else:
            return              # stopping before the database answered
        if stranded:
            LOG.info("fabric: %(n)d port(s) DOWN with no provisioning block (a worker "
                     "died between lifting its block and Neutron's status update): "
                     "blocked again, to be told again: %(ids)s",
                     {"n": len(stranded), "ids": ", ".join(stranded[:10])})
        if waiting:
            LOG.info("fabric: %d network(s) with ports still DOWN and no journal entry "
                     "(a worker died before telling Neutron): converging them again",
                     len(waiting))

    def run(self, context, taken: Mapping[str, tuple[BoundPort, str]]) -> None:
        """Tell Neutron about the ports; a network whose ports could not be told is
        retried by the fabric worker (a journal row)."""
        failures = provisioning.complete(
            context, {port_id: port for port_id, (port, _) in taken.items()},
            {port_id: network for port_id, (_, network) in taken.items()},
            between=self._give_way, parallel=PARALLEL)
        self.told += len(taken)
        for network_id, failure in sorted(failures.items()):
            LOG.warning("fabric: %(err)s; network %(net)s converged again",
                        {"err": failure, "net": network_id})
        self._retry(context, failures)

    @staticmethod
    def _retry(context, network_ids, delay: float = RETRY_DELAY) -> None:
        for network_id in sorted(network_ids):
            store.record(context, names.RESOURCE_NETWORK, network_id, OPERATION,
                         delay=delay)


class _Stopping(Exception):
    """The process is stopping: leave the rest to the next worker's start."""
