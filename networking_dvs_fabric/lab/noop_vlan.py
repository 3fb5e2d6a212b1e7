"""``dvs_fabric_noop_vlan``: a bottom driver that binds VLAN segments and does no I/O.

It exists as the baseline of ``dvs-fabric bench bind`` and ``bench fabric``: the
same Neutron, the same request, everything but the vCenter and switch work.  It
binds ``vlan`` segments on the physical networks listed in ``[ml2_noop_vlan]
physical_networks`` for any host, and with ``vxlan_too`` also VXLAN segments at
level 0 (stock Neutron has no driver that binds without an agent, and a binding
that fails is retried by ML2, which would make a baseline look slow).  Not for
production use: only the lab's Neutron can load it (``lab/neutron.py``,
``write_lab_python``).
"""
from __future__ import annotations

from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg

GROUP = "ml2_noop_vlan"
OPTS = [cfg.ListOpt("physical_networks", default=[],
                    help="Physical networks whose VLAN segments this baseline driver binds."),
        cfg.BoolOpt("vxlan_too", default=False,
                    help="Also bind VXLAN segments (a baseline for the fabric benchmark).")]


class NoopVlanMechanismDriver(api.MechanismDriver):
    def initialize(self) -> None:
        cfg.CONF.register_opts(OPTS, group=GROUP)
        self._physnets = set(cfg.CONF[GROUP].physical_networks)
        self._vxlan = cfg.CONF[GROUP].vxlan_too

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context: api.PortContext) -> None:
        for segment in context.segments_to_bind:
            vlan = (segment.get(api.NETWORK_TYPE) == n_const.TYPE_VLAN and
                    segment.get(api.PHYSICAL_NETWORK) in self._physnets)
            if vlan or (self._vxlan and segment.get(api.NETWORK_TYPE) == n_const.TYPE_VXLAN):
                context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OTHER,
                                    {portbindings.VIF_DETAILS_CONNECTIVITY: self.connectivity},
                                    status=n_const.PORT_STATUS_ACTIVE)
                return
