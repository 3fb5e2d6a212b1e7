"""Which NIC of a VM carries which Neutron port: Nova's claims, checked.

Nova's VMware driver names a VM's ports in ``nvp.iface-id.N`` (N its lowest free
index, not the card's position) and the instance in ``nvp.vm-uuid``.  Anyone allowed
to edit a VM's advanced settings can write those keys, so they only name
candidates: a port is placed on the NIC that has the port's MAC on a port group of
the port's network, on the VM the port belongs to (``vm_state.place``).  What
Neutron says comes from its database; which network a port group is for, from the
ownership marker of our port groups in vCenter.  A refused claim is logged once.
"""
from __future__ import annotations

import logging
from typing import Iterable

from neutron.db import models_v2
from neutron_lib.db import api as db_api

from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.db.in_lists import chunks
from networking_dvs_fabric.vcenter.vm_state import PortFacts, VmState, place

LOG = logging.getLogger(__name__)


def port_facts(context, port_ids: Iterable[str]) -> dict[str, PortFacts]:
    """MAC, network and device of each port Neutron knows among ``port_ids``."""
    ids = sorted(set(port_ids))
    rows = []
    with db_api.CONTEXT_READER.using(context):
        for chunk in chunks(ids):
            rows += context.session.query(
                models_v2.Port.id, models_v2.Port.mac_address, models_v2.Port.network_id,
                models_v2.Port.device_id).filter(models_v2.Port.id.in_(chunk)).all()
    return {row.id: PortFacts(row.mac_address.lower(), row.network_id, row.device_id or "")
            for row in rows}


class ClaimChecker:
    """Places claimed ports on their NICs for the watcher (one per watcher)."""

    def __init__(self, backend: VSphereBackend) -> None:
        self._backend = backend
        # Every port group of the mapped DVSs -> its network (None: not ours).  A key
        # not in it is a port group made since the last read: read again at once.
        self._networks: dict[str, str | None] = {}
        self._logged: set[tuple[str, str, str]] = set()

    def _network_of(self, port_group_key: str | None) -> str | None:
        """The network of our port group ``port_group_key`` (None: not ours).  Raises
        VCenterError when the port groups could not be read: not known is not "no"."""
        if not port_group_key:
            return None
        if port_group_key not in self._networks:
            self._read_port_groups()
            # Still unknown after a full read: not on a mapped DVS; do not read again.
            self._networks.setdefault(port_group_key, None)
        return self._networks[port_group_key]

    def _read_port_groups(self) -> None:
        networks: dict[str, str | None] = {}
        for dvs_name in sorted(set(self._backend.settings.dvs_mappings.values())):
            networks.update({pg.key: pg.network_id
                             for pg in self._backend.port_groups(dvs_name)})
        self._networks = networks

    def place(self, context, state: VmState) -> VmState:
        """``state`` with each checked port on its NIC; refused claims logged once.
        Raises VCenterError when a claim cannot be checked now (vCenter unreadable):
        the caller then leaves what it knew of the VM as it was."""
        if not state.claims:
            return state
        return self._place_with(state, port_facts(context, state.claims))

    def place_all(self, context, states: Iterable[VmState]) -> list[VmState]:
        """``place`` for many VMs (a full read) with one read of Neutron's ports."""
        states = list(states)
        facts = port_facts(context, {port for state in states for port in state.claims})
        return [self._place_with(state, facts) if state.claims else state
                for state in states]

    def _place_with(self, state: VmState, facts: dict[str, PortFacts]) -> VmState:
        placed, refused = place(state, facts, self._network_of)
        for port_id, why in sorted(refused.items()):
            key = (state.moid, port_id, why)
            if key not in self._logged:
                self._logged.add(key)
                LOG.warning("vCenter watcher: VM %(vm)s (%(moid)s) claims port %(port)s in "
                            "its extraConfig, ignored: %(why)s",
                            {"vm": state.name, "moid": state.moid, "port": port_id,
                             "why": why})
        return placed
