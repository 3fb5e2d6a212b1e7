"""A Neutron worker that runs one loop in a thread of its process.

The journal workers, the vCenter watcher and the port group sweeper run in
``neutron-periodic-workers`` (the drivers' ``get_workers``) as threads of that
process (``worker_process_count=0``); the first to start sets that process's garbage
collector (``gc_policy``).  Subclasses write ``_loop``, which must
return soon after ``self._stop`` is set; ``stop`` sets it, ``wait`` joins.
"""
from __future__ import annotations

import threading

from neutron_lib import worker

from networking_dvs_fabric import gc_policy


class ThreadWorker(worker.BaseWorker):
    #: what Neutron calls the worker, and the thread's name
    name = "dvs-fabric worker"
    thread_name = "dvs-fabric-worker"

    def __init__(self) -> None:
        super().__init__(worker_process_count=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str | None = None, desc: str | None = None) -> None:
        super().start(name=name or self.name, desc=desc)
        self._stop.clear()
        gc_policy.apply_once(gc_policy.configured())
        self._before_start()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name,
                                        daemon=True)
        self._thread.start()

    def _before_start(self) -> None:
        """Per-process set-up, run in the process that starts the thread."""

    def _loop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def reset(self) -> None:
        pass
