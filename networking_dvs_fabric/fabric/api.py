"""What any fabric backend must do, whatever speaks to the switches.

The worker computes, for a batch of networks, what each leaf must hold for them
(:class:`NetworkOnLeaf`) and hands it to a backend's :meth:`FabricBackend.converge`
per leaf.  The backend reads the leaf, changes only what differs, in one
transaction per leaf, and never touches anything without the project's
ownership marker.  Every call may be repeated: the worker relies on that after a
crash.  ``hwvtep.py`` does this over OVSDB ``hardware_vtep``; a vendor REST
backend can do the same without the drivers noticing.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Collection, Mapping

# How to reach a leaf is part of the topology; backends take it as it is.
from networking_dvs_fabric.topology import LeafSpec, SslFiles  # noqa: F401

MARKER_KEY = "managed-by"
MARKER_VALUE = "networking-dvs-fabric"
NETWORK_ID_KEY = "network-id"
# The deployment that made the object (``db/deployment.py``); absent on objects of
# versions before issue 12 ("legacy", adopted by the deployment that has the network).
DEPLOYMENT_KEY = "deployment"


class FabricError(Exception):
    """Base of the fabric backends' errors."""

    temporary = False


class LeafUnreachable(FabricError):
    """The leaf did not answer (down, refused, timed out): retry later."""

    temporary = True


class LeafBusy(FabricError):
    """The leaf's content changed under us (another writer got there first): retry."""

    temporary = True


class LeafRejected(FabricError):
    """The leaf refused a change for a reason retrying will not fix."""



@dataclasses.dataclass(frozen=True)
class NetworkOnLeaf:
    """Everything one network needs on one leaf.

    ``bindings``: (leaf port, VLAN) pairs mapped to the network's logical switch.
    ``remote_macs``: (MAC, tunnel IP of the leaf behind which the MAC lives), for
    ports on other leaves (controller mode; empty in evpn mode).
    ``flood_tunnel_ips``: the other leaves of the network, for unknown-destination
    frames (controller mode; empty in evpn mode).
    """

    network_id: str
    vni: int
    bindings: frozenset[tuple[str, int]] = frozenset()
    remote_macs: frozenset[tuple[str, str]] = frozenset()
    flood_tunnel_ips: frozenset[str] = frozenset()


@dataclasses.dataclass
class ConvergeResult:
    """What one :meth:`FabricBackend.converge` call did on one leaf."""

    leaf: str
    transactions: int = 0        # OVSDB (or REST) write transactions sent
    changes: int = 0             # rows created, changed or removed
    # Networks whose logical switch is still referenced by rows the switch owns
    # (its local MACs): everything else of theirs is gone; retry the switch later.
    switch_removal_pending: set[str] = dataclasses.field(default_factory=set)


class FabricBackend(abc.ABC):
    """One backend instance serves every leaf of the topology."""

    @abc.abstractmethod
    def converge(self, leaf: str,
                 desired: Mapping[str, NetworkOnLeaf | None]) -> ConvergeResult:
        """Make ``leaf`` hold exactly ``desired`` for the networks named in it.

        A value of ``None`` means the network needs nothing on this leaf: its remote
        MACs, flooding list, VLAN bindings and logical switch go (in that order).
        Creation runs in dependency order (logical switch, bindings, MACs).  Networks
        not named are left alone.  All writes for the call go in one transaction.
        Raises :class:`LeafUnreachable` when the leaf does not answer and
        :class:`LeafRejected` when it refuses the transaction.
        """

    @abc.abstractmethod
    def read(self, leaf: str, network_ids: Collection[str] | None = None,
             holding: Collection[tuple[str, int]] = ()) -> dict[str, NetworkOnLeaf]:
        """What the leaf holds for the networks this deployment owns there: every one
        (``network_ids`` None), or those named plus those holding one of the (port,
        VLAN)s in ``holding``.  Reading some costs what they hold, not what the leaf
        holds (the fabric worker reads a batch's networks once per batch)."""

    def others(self, leaf: str) -> dict[str, str | None]:
        """Networks on the leaf with the project's marker that are not this deployment's:
        network id -> the deployment that made them (None: a legacy marker without one)."""
        return {}

    def database_of(self, leaf: str) -> str:
        """Leaves with the same answer share one database (their writes go one after
        another: logical switches and locators are the database's, not a switch's)."""
        return leaf

    def read_all(self, leaf: str) -> tuple[dict[str, NetworkOnLeaf], dict[str, str | None]]:
        """:meth:`read` of every network and :meth:`others`, from one read of the leaf
        (the audit's)."""
        return self.read(leaf), self.others(leaf)

    def adopt(self, leaf: str, network_ids: set[str]) -> list[str]:
        """Give the legacy objects of these networks (ours: Neutron has them) our id."""
        return []

    @abc.abstractmethod
    def ports(self, leaf: str) -> set[str]:
        """Names of the leaf's physical ports."""

    def identity(self, leaf: str) -> str | None:
        """Something that changes when the leaf comes back as a different switch (e.g.
        restarted with an empty database); None when the backend cannot tell."""
        return None

    def known_identity(self, leaf: str) -> str | None:
        """:meth:`identity` as known now without asking the leaf (None: not known)."""
        return None

    def on_identity_change(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback(leaf)`` when a leaf shows a new identity (a backend that
        cannot tell never calls it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop every connection."""
