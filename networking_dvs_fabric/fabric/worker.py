"""The fabric worker: journal entries of networks in, leaves programmed out.

Level-triggered: an entry only names a network.  For a batch of networks the
worker reads Neutron's intent, computes what every leaf must hold and hands each
leaf its part in one backend call (one OVSDB transaction per leaf per batch).  A
leaf that does not answer makes the batch's networks retry later (the leaves that
answer converge meanwhile); one that refuses is retried network by network, so only
the network at fault is marked failed.  A (port, VLAN) the batch wants that one of
our networks outside it still holds (its VLAN given back and handed out again) is
rebound when Neutron no longer gives it to that holder.  Each leaf is read once per
batch, for the batch's networks and those holders only.  The leaves of a step are
written side by side (``LEAF_PARALLEL`` at once): a leaf's transaction is mostly a
wait for the switch to commit and answer, and the leaves are independent (leaves that
share one database are written one after another).  Ports the batch made
carried are handed to the :class:`~networking_dvs_fabric.fabric.completer.Completer`
when the worker runs as a thread (Neutron's status updates then stay off the
leaves' path); run by hand (tests, ``dvs-fabric sync``) they are told inline.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from concurrent import futures
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, ContextManager, Mapping, Protocol, Sequence

from networking_dvs_fabric import names
from networking_dvs_fabric.fabric import provisioning
from networking_dvs_fabric.fabric.api import FabricBackend, FabricError, NetworkOnLeaf
from networking_dvs_fabric.fabric.completer import Completer
from networking_dvs_fabric.fabric.desired import (DesiredByLeaf, desired_state, holders,
                                                  make_before_break, releases, wanted_bindings)
from networking_dvs_fabric.fabric.intent import NetworkIntent, read_intents
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.worker import JournalWorker, PermanentFailure, TemporaryFailure
from networking_dvs_fabric.vcenter import errors

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)
LEAF_PARALLEL = 8       # leaves written at once in one step of a batch


def _on_leaves(steps: Mapping[str, Callable[[], dict[str, Exception]]],
               database_of: Callable[[str], str]) -> dict[str, dict[str, Exception]]:
    """Each leaf's step (its failures per network), the leaves side by side; leaves
    sharing a database one after another."""
    shared: dict[str, list[str]] = {}
    for leaf in steps:
        shared.setdefault(database_of(leaf), []).append(leaf)

    def run(leaves: list[str]) -> dict[str, dict[str, Exception]]:
        return {leaf: steps[leaf]() for leaf in leaves}
    if len(shared) <= 1:
        return run(list(steps))
    with futures.ThreadPoolExecutor(max_workers=min(LEAF_PARALLEL, len(shared)),
                                    thread_name_prefix="dvs-fabric-leaf") as pool:
        running = [pool.submit(run, leaves) for leaves in shared.values()]
        return {leaf: failures for done in running for leaf, failures in done.result().items()}


class FabricSync:
    """The handler: converge the leaves for a batch of networks."""

    def __init__(self, runtime: "Runtime") -> None:
        self._runtime = runtime
        self.transactions = 0
        self.landed = provisioning.Landed()       # this batch's converges that succeeded
        self.completer: Completer | None = None   # None: ports are told inline
        self._tally = threading.Lock()            # transactions and landed, per leaf thread

    def sibling(self) -> "FabricSync":
        """A handler for another thread of the process (the periodic full sync's
        repair): a batch state of its own, the same completer."""
        other = FabricSync(self._runtime)
        other.completer = self.completer
        return other

    def __call__(self, context, entries: Sequence[store.Entry]) -> list[Exception | None]:
        if self.completer is None:
            return self._handle(context, entries)
        with self.completer.busy():
            return self._handle(context, entries)

    @property
    def backend(self) -> FabricBackend:
        return self._runtime.fabric

    def _handle(self, context, entries: Sequence[store.Entry]) -> list[Exception | None]:
        network_ids = [e.resource_id for e in entries]
        verdicts: dict[str, Exception | None] = {n: None for n in network_ids}
        self.landed = provisioning.Landed()
        try:
            runtime = self._runtime
            intents = read_intents(context, network_ids, runtime.fabric_physical_networks())
            desired = desired_state(intents, runtime.require_topology(), runtime.directory,
                                    runtime.fabric_settings.mac_distribution,
                                    runtime.fabric_settings.mode)
        except errors.VCenterError as exc:
            failure = TemporaryFailure(f"vCenter needed to place cluster hosts: {exc}")
            return [failure for _ in entries]

        def note(failures: dict[str, Exception]) -> None:
            for network_id, failure in failures.items():
                if verdicts.get(network_id) is None or isinstance(failure, PermanentFailure):
                    verdicts[network_id] = failure
        # Make before break: every leaf first gets what is added (and moved MACs), and
        # only then does any leaf lose what is no longer needed.
        current: dict[str, dict[str, NetworkOnLeaf]] = {}
        failed_first: dict[str, set[str]] = {}      # leaf -> networks its first step failed
        for leaf, networks in desired.items():
            try:
                # The batch's networks and those holding a (port, VLAN) the batch
                # wants: what this batch needs of the leaf, not all it holds.
                current[leaf] = self.backend.read(leaf, list(networks),
                                                  sorted(wanted_bindings(networks)))
            except FabricError as exc:
                note({n: TemporaryFailure(str(exc)) for n in desired[leaf]})
                failed_first[leaf] = set(desired[leaf])
        try:
            riders = self._holders(context, desired, current)
        except errors.VCenterError as exc:
            failure = TemporaryFailure(f"vCenter needed to place cluster hosts: {exc}")
            return [failure for _ in entries]
        first = {leaf: make_before_break({leaf: desired[leaf]}, {leaf: have})[leaf]
                 for leaf, have in current.items()}
        for leaf, failures in _on_leaves({
                leaf: functools.partial(self._converge, leaf, networks, riders[leaf])
                for leaf, networks in first.items() if networks != desired[leaf]},
                self.backend.database_of).items():
            failed_first[leaf] = set(failures)
            note(failures)
        # A network that Neutron still has and whose first step failed on a leaf that
        # must carry it (a VM moving to a leaf that is down) loses nothing yet anywhere:
        # its old place is kept until the new one is programmed.  Nothing else holds
        # back: a deleted network, or one that only leaves the failing leaf, converges
        # fully on every leaf that answers (that leaf converges when it is back).
        held = {n for leaf, failed in failed_first.items() for n in failed
                if desired[leaf][n] is not None}
        targets = {leaf: {n: (first[leaf][n] if n in held else want)
                          for n, want in networks.items()}
                   for leaf, networks in desired.items()
                   if leaf in first}          # a leaf not readable now: retried later
        for failures in _on_leaves({
                leaf: functools.partial(self._converge, leaf, target, riders[leaf])
                for leaf, target in targets.items()}, self.backend.database_of).values():
            note(failures)
        if self.completer is None:
            note(provisioning.complete_carried(context, intents, desired, self.landed,
                                               runtime))
        else:
            ports, network_of, failures = provisioning.carried_ports(
                intents, desired, self.landed, runtime)
            note(failures)
            self.completer.submit(ports, network_of)
        return [verdicts[e.resource_id] for e in entries]

    def _converge(self, leaf: str, networks: dict[str, NetworkOnLeaf | None],
                  riders: Mapping[str, NetworkOnLeaf | None] = MappingProxyType({})
                  ) -> dict[str, Exception]:
        """Failures per network on this leaf (empty: all done).

        ``riders``: holders of (port, VLAN)s these networks take (see ``_holders``),
        named in every call so the leaf lets them rebind; they get no verdict.
        """
        try:
            result = self.backend.converge(leaf, {**riders, **networks})
        except FabricError as exc:
            if exc.temporary:
                return {n: TemporaryFailure(str(exc)) for n in networks}
            if len(networks) == 1:
                return {n: PermanentFailure(str(exc)) for n in networks}
            LOG.warning("fabric: leaf %(leaf)s refused a batch of %(n)d networks (%(err)s); "
                        "retrying them one by one", {"leaf": leaf, "n": len(networks),
                                                      "err": exc})
            failures: dict[str, Exception] = {}
            for network_id, want in networks.items():
                failures.update(self._converge(leaf, {network_id: want}, riders))
            return failures
        with self._tally:
            self.transactions += result.transactions
            self.landed.add(leaf, networks)
        if result.changes:
            LOG.info("fabric: leaf %(leaf)s converged for %(n)d networks: %(c)d changes in "
                     "%(t)d transaction(s)", {"leaf": leaf, "n": len(networks),
                                              "c": result.changes, "t": result.transactions})
        return {n: TemporaryFailure(f"logical switch on {leaf} still referenced by the "
                                    "switch's local MACs; removal retried")
                for n in result.switch_removal_pending if n in networks}

    def _holders(self, context, desired: DesiredByLeaf,
                 current: dict[str, dict[str, NetworkOnLeaf]]) -> DesiredByLeaf:
        """Per leaf, our networks outside the batch that hold a (port, VLAN) the batch
        wants there, with what each is handed (``desired.releases``).

        Their intent is read now and their desired state computed, so a VLAN Neutron
        took back from one is rebound whatever the holder's own journal entry is doing
        (pending behind a leaf that is down, or with another worker).  Only the
        batch's own networks claim anything, so one round is enough.  Each holder
        named also gets a journal entry of its own: whatever its in-flight entry and
        this batch did to it in whichever order, it is converged once more after.
        Raises what ``desired_state`` raises.
        """
        found = holders(desired, current)
        if not found:
            return {leaf: {} for leaf in desired}
        theirs = self._desired(read_intents(context, found,
                                            self._runtime.fabric_physical_networks()))
        riders = releases(desired, theirs, current)
        named = sorted({n for on_leaf in riders.values() for n in on_leaf})
        if named:
            LOG.info("fabric: networks %(held)s hold VLAN bindings that networks of this "
                     "batch now have from Neutron; rebinding them and converging the "
                     "holders again", {"held": ", ".join(named)})
            for network_id in named:
                store.record(context, names.RESOURCE_NETWORK, network_id, "vlan-rebound")
        return riders

    def _desired(self, intents: Mapping[str, NetworkIntent | None]) -> DesiredByLeaf:
        runtime = self._runtime
        return desired_state(intents, runtime.require_topology(), runtime.directory,
                             runtime.fabric_settings.mac_distribution,
                             runtime.fabric_settings.mode)


class Companion(Protocol):
    """Something that runs threads of its own beside the worker, in its process."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self) -> None: ...


class FabricWorker(JournalWorker):
    def __init__(self, runtime: "Runtime") -> None:
        self.sync = FabricSync(runtime)
        self._runtime = runtime
        self._companions: list[Companion] = []
        super().__init__("fabric_hwvtep journal worker", self.sync, runtime.worker_settings,
                         resource_types=(names.RESOURCE_NETWORK,))
        runtime.expect_leaves()

    def add_companion(self, companion: Companion) -> None:
        """Start ``companion`` with this worker's thread (in the worker's process),
        stop and join it with the worker (the full sync's port-group thread)."""
        self._companions.append(companion)

    def _before_start(self) -> None:
        super()._before_start()
        self.sync.completer = Completer()
        self.sync.completer.start()
        for companion in self._companions:
            companion.start()

    def _leaves_first(self) -> ContextManager[object]:
        """While the leaves are repaired, the completer waits (its status updates
        come after the leaves); nothing to hold off before it is started."""
        completer = self.sync.completer
        return completer.busy() if completer is not None else contextlib.nullcontext()

    def on_housekeeping(self, context) -> None:
        # The full sync hangs here: its leaf repairs come before telling Neutron too,
        # and the first one before the process's other workers start their passes.
        try:
            with self._leaves_first():
                super().on_housekeeping(context)
        finally:
            self._runtime.leaves_repaired()

    def on_pass(self, context) -> None:
        # A replaced leaf's repair runs here (``FullSync.run_if_leaf_changed``).
        with self._leaves_first():
            super().on_pass(context)

    def stop(self) -> None:
        super().stop()
        for companion in self._companions:
            companion.stop()
        if self.sync.completer is not None:
            self.sync.completer.stop()

    def wait(self) -> None:
        super().wait()
        # The companions first (a part under way may still be converging leaves);
        # the completer, stopping since stop(), leaves the ports it did not tell to
        # the next start's recovery.
        for companion in self._companions:
            companion.join()
        if self.sync.completer is not None:
            self.sync.completer.join()
        self._runtime.close_fabric()
