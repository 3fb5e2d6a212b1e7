"""Configuration options of networking-dvs-fabric, declared in one place.

Options are registered by the driver when it initialises (``register_opts``),
never at import.  ``list_opts`` feeds ``oslo-config-generator``.
"""
from __future__ import annotations

from oslo_config import cfg

from networking_dvs_fabric.vcenter.naming import DEFAULT_FORMAT

VSPHERE_GROUP = "ml2_vsphere"

DEFAULT_PORT_GROUP_NAME_FORMAT = DEFAULT_FORMAT

vsphere_opts = [
    cfg.URIOpt("vcenter_url", schemes=["https"],
               help="Required. vCenter SDK endpoint, e.g. https://vcenter.example.com/sdk."),
    cfg.StrOpt("username", help="Required. vCenter user the driver logs in as."),
    cfg.StrOpt("password", secret=True, help="Required. Password of that vCenter user."),
    cfg.StrOpt("ca_file",
               help="PEM file of the CA(s) that sign vCenter's certificate. Unset: the "
                    "system's trust store. Verification is always on unless 'insecure'."),
    cfg.BoolOpt("insecure", default=False,
                help="Do not verify vCenter's certificate. For labs only; logs a warning."),
    cfg.StrOpt("datacenter", help="Required. Name of the vCenter datacenter that holds the DVSs."),
    cfg.ListOpt("dvs_mappings", default=[],
                help="Required. physical_network:DVS name pairs. VLAN segments on these physical "
                     "networks are bound to port groups of that DVS."),
    cfg.ListOpt("host_mappings", default=[],
                help="binding host:vCenter cluster pairs. Nova's VMware driver binds "
                     "ports to the compute host of a cluster; name it here. An ESXi "
                     "host's own name is accepted as a binding host without a mapping."),
    cfg.StrOpt("port_group_name_format", default=DEFAULT_PORT_GROUP_NAME_FORMAT,
               help="Name of the port group made for a network. Fields: {network_name}, "
                    "{network_id}, {dvs_name}, {physical_network}. Must contain "
                    "{network_id}. The network name is shortened so that the whole "
                    "name stays within vCenter's 80 characters."),
    cfg.FloatOpt("connect_timeout", default=10.0, min=0.1,
                 help="Seconds to wait for a TCP connection to vCenter."),
    cfg.FloatOpt("request_timeout", default=60.0, min=1.0,
                 help="Seconds to wait for one vCenter API answer."),
    cfg.IntOpt("api_retry_count", default=3, min=1,
               help="Attempts of a vCenter call that failed for a temporary reason "
                    "(connection reset, timeout) before giving up."),
    cfg.FloatOpt("task_timeout", default=120.0, min=1.0,
                 help="Seconds to wait for a vCenter task (e.g. creating a port group)."),
    cfg.FloatOpt("unreachable_holdoff", default=5.0, min=0.0,
                 help="Seconds during which binds fail at once after vCenter was found "
                      "unreachable, instead of each waiting out the timeouts again (ML2 "
                      "retries a failed binding up to ten times in one request)."),
    cfg.IntOpt("cleanup_interval", default=60, min=1,
               help="Seconds between sweeps that remove port groups no bound port uses "
                    "any more (including ones kept earlier because a VM still used "
                    "them)."),
]


def register_opts(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    conf.register_opts(vsphere_opts, group=VSPHERE_GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(VSPHERE_GROUP, list(vsphere_opts))]
