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
    cfg.BoolOpt("raise_dvs_mtu", default=False,
                help="When a network's MTU is larger than its DVS's MTU (config.maxMtu; "
                     "unset counts as vSphere's 1500), raise the DVS's MTU to the "
                     "network's (never lowered; needs the DVSwitch.Modify privilege and "
                     "changes the uplinks of every host on the DVS) instead of refusing "
                     "to bind the port. The physical switch ports must carry it."),
    cfg.IntOpt("max_filter_rules", default=1000, min=10,
               help="Most traffic rules the project writes into one port group's "
                    "filter (one port group per network and set of security groups). A "
                    "set whose groups need more is refused with an error naming this "
                    "option; vSphere's own limit is not in its API reference."),
    cfg.IntOpt("max_port_groups", default=9000, min=1,
               help="Most port groups of networking-dvs-fabric (every deployment's on the "
                    "datacenter) before no new one is made. vSphere 7 and 8 allow 10,000 "
                    "distributed port groups per vCenter, other users included. A port "
                    "whose network and set of security groups would need a new port "
                    "group beyond it fails to bind, naming this option."),
]


FABRIC_GROUP = "ml2_fabric"
MODES = ("pre_provision", "on_demand")
MAC_DISTRIBUTIONS = ("controller", "evpn")

fabric_opts = [
    cfg.StrOpt("topology_file",
               help="Required by fabric_hwvtep. YAML file naming the leaves (OVSDB endpoint, "
                    "tunnel IP) and which leaf ports each host is cabled to."),
    cfg.StrOpt("mode", default="pre_provision", choices=MODES,
               help="pre_provision: a network bound to a cluster gets its VLAN binding on "
                    "every leaf port of every host of the cluster. on_demand: only on the "
                    "leaf ports of hosts that run one of its VMs (needs the vCenter watcher)."),
    cfg.StrOpt("mac_distribution", default="controller", choices=MAC_DISTRIBUTIONS,
               help="controller: write remote MACs and flooding lists into the leaves. "
                    "evpn: the leaves learn MACs by BGP EVPN; write only VLAN-VNI bindings."),
    cfg.FloatOpt("ovsdb_connect_timeout", default=10.0, min=0.1,
                 help="Seconds to wait for a leaf's OVSDB server to connect and sync."),
    cfg.FloatOpt("ovsdb_transaction_timeout", default=30.0, min=1.0,
                 help="Seconds to wait for one OVSDB transaction on a leaf."),
    cfg.IntOpt("worker_batch_size", default=200, min=1,
               help="Networks the fabric worker reconciles together; each leaf gets one "
                    "transaction per batch."),
    cfg.FloatOpt("retry_initial_delay", default=1.0, min=0.05,
                 help="Seconds before a temporarily failed journal entry (a leaf down) is "
                      "retried; doubled on each failure up to retry_max_delay."),
    cfg.FloatOpt("retry_max_delay", default=30.0, min=0.1,
                 help="Longest wait between two retries of a journal entry."),
    cfg.FloatOpt("claim_timeout", default=300.0, min=1.0,
                 help="Seconds after which journal entries claimed by a worker that "
                      "neither finished nor released them are handed to another worker. "
                      "Claims of dead processes on the same host are released at once."),
    cfg.IntOpt("completed_retention", default=3600, min=0,
               help="Seconds completed journal entries are kept before pruning."),
    cfg.IntOpt("full_sync_interval", default=600, min=0,
               help="Seconds between full syncs by the fabric worker (what 'dvs-fabric "
                    "sync' does: port groups and every leaf against Neutron). A full "
                    "sync also runs when a worker starts, and at once when vCenter's "
                    "instance UUID changes or a leaf comes back as a new switch (e.g. an "
                    "empty database); one process at a time. 0: only at start and on "
                    "those changes."),
    cfg.IntOpt("worker_gc_young_threshold", default=50000, min=0,
               help="Python's young-generation garbage-collection threshold in the "
                    "process that runs the project's workers (neutron-periodic-workers), "
                    "set when the first of them starts. That process holds every leaf's "
                    "replica; with Python's default (700) a port-group audit or a full "
                    "read makes Python walk the whole heap again and again, stopping the "
                    "vCenter watcher and the fabric worker meanwhile. 0: leave Python's "
                    "thresholds."),
    cfg.FloatOpt("poll_interval", default=2.0, min=0.05,
                 help="Longest sleep of an idle journal worker. Wake-ups (below) make it "
                      "start at once when an API worker records work."),
    cfg.StrOpt("wakeup_listen", default="127.0.0.1:6651",
               help="HOST:PORT (UDP) the journal workers listen on for wake-ups. Several "
                    "worker processes on one host share it. Empty: no listening."),
    cfg.ListOpt("wakeup_targets", default=["127.0.0.1:6651"],
                help="HOST:PORT (UDP) list that API workers notify after recording work: "
                     "the wakeup_listen address of every host that runs journal workers."),
]


def register_opts(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    conf.register_opts(vsphere_opts, group=VSPHERE_GROUP)
    conf.register_opts(fabric_opts, group=FABRIC_GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(VSPHERE_GROUP, list(vsphere_opts)), (FABRIC_GROUP, list(fabric_opts))]
