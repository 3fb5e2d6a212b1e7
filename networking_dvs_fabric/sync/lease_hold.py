"""A lease held by one process while any of several of its threads needs it.

The full sync runs in two parts on two threads of the same process (the leaves on
the fabric worker's at its start and on a new identity, the port groups - and the
periodic sync's leaves - on a thread beside it), one after the other or - a leaf
replaced while the port groups are checked - at the same time.
Other processes must see one holder for as long as either runs: the first part
takes the lease from the database (``journal/lease.py``) and starts renewing it,
the last one to end stops the renewals and gives it back.  Counted, under one
lock, so a part starting while the last one ends never finds the lease released
under it.
"""
from __future__ import annotations

import threading

from networking_dvs_fabric.journal import lease, store


class LeaseHold:
    def __init__(self, name: str, ttl: float, renew_interval: float) -> None:
        self.name, self.ttl, self.renew_interval = name, ttl, renew_interval
        self.holder = ""           # made in the process that first takes it
        self._count = 0
        self._lock = threading.Lock()
        self._renewer: lease.Renewer | None = None

    @property
    def held(self) -> bool:
        """Does a part of this process hold the lease now?"""
        with self._lock:
            return self._count > 0

    def take(self, context) -> bool:
        """Hold the lease for one more part; False when another process has it."""
        with self._lock:
            if not self.holder:
                self.holder = store.make_worker_id()
            if self._count == 0:
                if not lease.acquire(context, self.name, self.holder, self.ttl):
                    return False
                self._renewer = lease.Renewer(self.name, self.holder, self.ttl,
                                              self.renew_interval).__enter__()
            self._count += 1
            return True

    def give(self, context) -> None:
        """One part is done; the last one gives the lease back."""
        with self._lock:
            self._count -= 1
            if self._count > 0:
                return
            renewer, self._renewer = self._renewer, None
            try:
                if renewer is not None:
                    renewer.__exit__(None, None, None)
            finally:
                lease.release(context, self.name, self.holder)
