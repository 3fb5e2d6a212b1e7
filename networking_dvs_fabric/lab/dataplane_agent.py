"""The dataplane agent: gives every VM of the simulator that has a Neutron NIC a namespace.

It plays the hypervisor's part in the lab.  It follows vCenter with the project's own
``VmWatch`` (one PropertyCollector, long polls) and, for every powered-on VM with a
NIC that carries ``nvp.iface-id.N`` (what Nova writes), wires a namespace with the
NIC's MAC and the Neutron port's fixed IP onto the bridge of the VM's ESXi host
(with agent hosts, the lab's Neutron runs DHCP: the VM asks it for its address with
``dhcp_client`` instead),
tagged with the port group's VLAN (read from vCenter).  When the simulator has
relocated a VM (``runtime.host`` changed) the link moves to the destination host's
bridge - the vMotion switchover.  A VM powered off, deleted or without the NIC loses
its namespace.  A migration-start event moves nothing: the VM still runs at the source.

Each link enforces what vCenter holds on its port group, as ESXi does: the port
group's ``config.defaultPortConfig`` (filter rules, security policy, ``blocked``) is
read back from vCenter, never from Neutron, and turned into OpenFlow flows on the
host bridge (``link_filters``, ``dataplane_filter``) when the NIC is plugged (before
the link is on the bridge), when it moves to another host (on the destination before
the switchover) or to another port group (``ReconfigVM_Task``: re-tagged if the VLAN
differs), and when the port group's setting changes.  The simulator reports no change
of a port group's setting, so the port groups carrying wired NICs are read again
every ``POLL_SECONDS`` (``pg_settings``).

Runs as a lab daemon: ``python -m networking_dvs_fabric.lab.dataplane_agent LAB_DIR``.
Each change it makes is logged as one line, ``dataplane: ...``, which the demo and
tests can read.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from networking_dvs_fabric.lab import dhcp_client
from networking_dvs_fabric.lab.client import NeutronClient, NeutronError
from networking_dvs_fabric.lab.dataplane import Dataplane
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.link_filters import LinkFilters, Wired
from networking_dvs_fabric.lab.pg_settings import SettingsPoll
from networking_dvs_fabric.lab.procs import LabError
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.inventory import load_inventory
from networking_dvs_fabric.vcenter.portgroups import PortGroupManager
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession
from networking_dvs_fabric.vcenter.vm_state import (MigrationStarting, PortFacts, VmGone,
                                                    VmState, place)
from networking_dvs_fabric.vcenter.vm_watch import VmWatch

LOG = logging.getLogger("dataplane")
WAIT_SECONDS = 2
POLL_SECONDS = 0.5


class Agent:
    def __init__(self, lab: Lab) -> None:
        state = lab.state() or {}
        data = state.get("services", {}).get("dataplane")
        if not data:
            raise SystemExit(f"the lab in {lab.dir} runs without a dataplane")
        self.plane = Dataplane.from_json(data)
        status = lab.status()
        vc = status["vcenter"]
        self.session = VCenterSession(VCenterConfig(
            url=vc["url"], username=vc["username"], password=vc["password"],
            ca_file=vc["ca_file"]))
        self.datacenter = vc["datacenter"]
        self.dvs_names = list(vc["dvs"].values())
        self.neutron = NeutronClient(status["neutron"]["url"], timeout=30)
        self.wired: dict[tuple[str, int], Wired] = {}
        self.vlans: dict[str, int] = {}          # port group key -> VLAN
        self.networks: dict[str, str | None] = {}   # port group key -> network (ours)
        self.filters = LinkFilters(self.plane, self.session)
        # With Neutron's DHCP agent in the lab, VMs get their addresses by DHCP.
        self.dhcp = bool(status.get("agent_hosts"))
        self.dhcp_clients: dict[tuple[str, int], subprocess.Popen] = {}
        self.lock = threading.Lock()             # the VM watch's thread vs the policy poll
        self.stop = threading.Event()
        self.watch: VmWatch | None = None

    # -- what the VM needs -----------------------------------------------------------
    def _read_port_groups(self, managers: list[PortGroupManager]) -> None:
        for manager in managers:
            for pg in manager.list(full=True):
                if pg.vlan is not None:
                    self.vlans[pg.key] = pg.vlan
                self.networks[pg.key] = pg.network_id
                self.filters.moids[pg.key] = pg.moid

    def _vlan(self, managers: list[PortGroupManager], key: str | None) -> int | None:
        if key is None:
            return None
        if key not in self.vlans:
            self._read_port_groups(managers)
        return self.vlans.get(key)

    def _network(self, managers: list[PortGroupManager], key: str | None) -> str | None:
        if key is not None and key not in self.networks:
            self._read_port_groups(managers)
        return self.networks.get(key or "")

    def _placed(self, managers: list[PortGroupManager], state: VmState) -> VmState:
        """The VM's NICs with their ports, checked as the watcher does (by MAC)."""
        facts: dict[str, PortFacts] = {}
        for port_id in state.claims:
            try:
                port = self.neutron.get_port(port_id)
            except NeutronError:
                continue
            facts[port_id] = PortFacts(port["mac_address"].lower(), port["network_id"],
                                       port.get("device_id") or "")
        return place(state, facts, lambda key: self._network(managers, key))[0]

    def _address(self, port_id: str) -> str | None:
        try:
            port = self.neutron.get_port(port_id)
        except NeutronError as exc:
            LOG.warning("dataplane: port %s not readable from Neutron: %s", port_id, exc)
            return None
        for fixed in port.get("fixed_ips") or []:
            if ":" in fixed["ip_address"]:
                continue
            subnet = self.neutron.get_subnet(fixed["subnet_id"])
            return f"{fixed['ip_address']}/{subnet['cidr'].split('/')[1]}"
        return None

    # -- what the port group enforces --------------------------------------------------
    def _setting_read(self, key: str, setting: Any) -> None:
        """A port group's setting as the poll read it: re-tag and re-filter its NICs."""
        policy, vlan = self.filters.remember(key, setting)
        if vlan is not None:
            self.vlans[key] = vlan
        for (moid, index), have in list(self.wired.items()):
            if have.port_group != key:
                continue
            now = have
            if vlan is not None and vlan != have.vlan:
                self.plane.vsctl(self.plane.hosts_db, "set", "Port",
                                 self.plane.vm_link(moid, index), f"tag={vlan}")
                now = dataclasses.replace(have, vlan=vlan)
                LOG.info("dataplane: %s nic %d re-tagged VLAN %d -> %d (port group %s)",
                         moid, index, have.vlan, vlan, key)
            if now is not have or have.policy is None or not have.policy.same_as(policy):
                self.wired[(moid, index)] = self.filters.enforce(
                    moid, index, now, have, f"port group {key} changed in vCenter", policy)

    def _polled_keys(self) -> dict[str, str]:
        with self.lock:
            return {self.filters.moids.get(w.port_group, w.port_group): w.port_group
                    for w in self.wired.values() if w.port_group}

    def _polled(self, settings: dict[str, Any]) -> None:
        with self.lock:
            for key, setting in settings.items():
                try:
                    self._setting_read(key, setting)
                except LabError as exc:
                    LOG.error("dataplane: filter: port group %s: %s", key, exc)

    # -- changes of VMs ------------------------------------------------------------------
    def apply(self, managers: list[PortGroupManager], change: Any) -> None:
        with self.lock:
            self._apply(managers, change)

    def _apply(self, managers: list[PortGroupManager], change: Any) -> None:
        if isinstance(change, MigrationStarting):
            LOG.info("dataplane: %s is migrating to %s (nothing moves until it has)",
                     change.vm_moid, change.destination_host)
            for (vm, index), have in list(self.wired.items()):
                if vm == change.vm_moid and have.host != change.destination_host:
                    self.filters.stage(vm, index, have, change.destination_host)
            return
        moid = change.moid
        wanted: dict[int, tuple[str, Any]] = {}
        if isinstance(change, VmState) and change.powered_on and change.host:
            change = self._placed(managers, change)
            for index, nic in enumerate(change.nics):
                if nic.iface_id:
                    wanted[index] = (change.host, nic)
        for (vm, index) in [k for k in self.wired if k[0] == moid and k[1] not in wanted]:
            self.filters.remove(vm, index, self.wired[(vm, index)])
            self._stop_dhcp(vm, index)
            self.plane.detach_vm(vm, index)
            del self.wired[(vm, index)]
            self.filters.forget(vm, index)
            LOG.info("dataplane: unplugged %s nic %d (its filter flows removed)", vm, index)
        for index, (host, nic) in wanted.items():
            vlan = self._vlan(managers, nic.port_group_key)
            if vlan is None:
                LOG.warning("dataplane: %s nic %d: port group %s has no VLAN; not wired",
                            moid, index, nic.port_group_key)
                continue
            have = self.wired.get((moid, index))
            if have is not None and have.mac == nic.mac:
                key = nic.port_group_key
                if (have.host, have.vlan, have.port_group) != (host, vlan, key):
                    self.wired[(moid, index)] = self._rewire(moid, index, have, host, vlan,
                                                             key)
                continue
            address = None if self.dhcp else self._address(nic.iface_id)
            wired = Wired(host, vlan, nic.mac, address, nic.port_group_key,
                          ofport=self.filters.ofport(moid, index))

            def plug(index: int = index, wired: Wired = wired) -> None:
                ns = self.plane.attach_vm(moid, index, wired.mac, wired.address, wired.host,
                                          wired.vlan, wired.ofport)
                LOG.info("dataplane: plugged %s nic %d (%s, %s) on %s VLAN %d as namespace "
                         "%s", moid, index, wired.mac,
                         wired.address or ("asking DHCP" if self.dhcp else "no IP"),
                         wired.host, wired.vlan, ns)
                if self.dhcp:
                    self._stop_dhcp(moid, index)
                    self.dhcp_clients[(moid, index)] = dhcp_client.start(
                        ns, self.plane.leases_dir)
            self.wired[(moid, index)] = self.filters.enforce(
                moid, index, wired, None, "plugged",
                self.filters.policy(wired.port_group, fresh=True), attach=plug)

    def _rewire(self, moid: str, index: int, have: Wired, host: str, vlan: int,
                key: str | None) -> Wired:
        """The NIC moved: to another host (vMotion), port group or VLAN."""
        started = time.monotonic()
        now = dataclasses.replace(have, host=host, vlan=vlan, port_group=key)
        policy = self.filters.policy(key, fresh=key != have.port_group)
        if have.host != host:
            # Flows first on the destination's bridge, then the switchover: no window.
            now = self.filters.enforce(moid, index, now, have, f"moved from {have.host}",
                                       policy,
                                       attach=lambda: self.plane.move_vm(
                                           moid, index, host, vlan, now.ofport))
        else:
            if have.vlan != vlan:
                self.plane.vsctl(self.plane.hosts_db, "set", "Port",
                                 self.plane.vm_link(moid, index), f"tag={vlan}")
            now = self.filters.enforce(moid, index, now, have,
                                       f"moved from port group {have.port_group}", policy)
        LOG.info("dataplane: moved %s nic %d %s -> %s, port group %s -> %s (VLAN %d -> %d) "
                 "in %.1f ms", moid, index, have.host, host, have.port_group, key, have.vlan,
                 vlan, (time.monotonic() - started) * 1000)
        return now

    def _stop_dhcp(self, moid: str, index: int) -> None:
        client = self.dhcp_clients.pop((moid, index), None)
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        dhcp_client.lease_file(self.plane.leases_dir,
                               self.plane.nic_ns(moid, index)).unlink(missing_ok=True)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        self.filters.reset_bridges()
        SettingsPoll(self.session, self._polled_keys, self._polled, POLL_SECONDS,
                     self.stop).start()
        while not self.stop.is_set():
            try:
                self._follow()
            except (errors.VCenterError, OSError) as exc:
                LOG.warning("dataplane: lost vCenter (%s); reading everything again in 2 s",
                            exc)
                self.stop.wait(2.0)

    def _follow(self) -> None:
        inventory = load_inventory(self.session, self.datacenter, self.dvs_names)
        managers = [PortGroupManager(self.session, dvs, inventory.datacenter_moid)
                    for dvs in inventory.dvs.values()]
        watch = VmWatch(self.session, inventory.datacenter_moid, wait_seconds=WAIT_SECONDS)
        self.watch = watch
        try:
            states = watch.resync()
            present = {s.moid for s in states}
            for moid in {vm for vm, _ in self.wired} - present:
                self.apply(managers, VmGone(moid))
            for state in states:
                self.apply(managers, state)
            LOG.info("dataplane: following vCenter, %d VMs, %d NICs wired", len(states),
                     len(self.wired))
            while not self.stop.is_set():
                for change in watch.wait():
                    self.apply(managers, change)
        finally:
            self.watch = None
            watch.close()

    def shutdown(self, *_: Any) -> None:
        self.stop.set()
        if self.watch is not None:
            self.watch.cancel()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m networking_dvs_fabric.lab.dataplane_agent LAB_DIR",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("networking_dvs_fabric").setLevel(logging.WARNING)
    agent = Agent(Lab(Path(args[0])))
    signal.signal(signal.SIGTERM, agent.shutdown)
    signal.signal(signal.SIGINT, agent.shutdown)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
