"""vsphere_dvs when vCenter or its configuration is wrong: start-up checks, vCenter down,
wrong password, untrusted certificate, expired session, insecure mode.

Tests that break the simulator (stop it, change its password or certificate) get a
fresh one of their own (``own_simulator``); the others share the module's.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import dvs_ml2_base as base
import fixtures
from neutron.plugins.ml2 import db as ml2_db
from neutron.plugins.ml2 import plugin as ml2_plugin
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants as n_const
from oslo_config import cfg

from networking_dvs_fabric import opts
from networking_dvs_fabric.lab.certs import make_self_signed
from networking_dvs_fabric.lab.procs import free_port
from networking_dvs_fabric.ml2 import vsphere_dvs
from networking_dvs_fabric.vcenter.session import VCenterSession

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


def _override(**values) -> None:
    for name, value in values.items():
        cfg.CONF.set_override(name, value, group=opts.VSPHERE_GROUP)


class TestStartUp(base.VSphereDVSTestCase):
    """A configuration that names what vCenter does not have stops Neutron, saying which."""

    shared = _SIM

    def assertRefusesToStart(self, error, *words):
        with self.assertLogs(base.LOGGER, "INFO"):      # keep the driver's logging quiet
            exc = self.assertRaises(error, ml2_plugin.Ml2Plugin)
        for word in words:
            self.assertIn(word, str(exc))
        return exc

    def test_missing_datacenter(self):
        _override(datacenter="NoSuchDC")
        self.assertRefusesToStart(vsphere_dvs.StartError, "[ml2_vsphere] datacenter",
                                  "NoSuchDC")

    def test_missing_dvs(self):
        _override(dvs_mappings=[f"{base.PHYSNET}:NoSuchDVS"])
        self.assertRefusesToStart(vsphere_dvs.StartError, "[ml2_vsphere] dvs_mappings",
                                  "NoSuchDVS", "found: DVS0")

    def test_missing_cluster(self):
        _override(host_mappings=["compute-x:NoSuchCluster"])
        self.assertRefusesToStart(vsphere_dvs.StartError, "[ml2_vsphere] host_mappings",
                                  "NoSuchCluster")

    def test_no_dvs_mappings(self):
        _override(dvs_mappings=[])
        self.assertRaises(vsphere_dvs.ConfigurationError, ml2_plugin.Ml2Plugin)

    def test_malformed_dvs_mappings(self):
        _override(dvs_mappings=["physnet-without-dvs"])
        exc = self.assertRaises(vsphere_dvs.ConfigurationError, ml2_plugin.Ml2Plugin)
        self.assertIn("dvs_mappings", str(exc))

    def test_bad_port_group_name_format(self):
        _override(port_group_name_format="{network_name}")
        exc = self.assertRaises(vsphere_dvs.ConfigurationError, ml2_plugin.Ml2Plugin)
        self.assertIn("port_group_name_format", str(exc))
        self.assertIn("{network_id}", str(exc))

    def test_missing_credentials(self):
        _override(username=None)
        exc = self.assertRaises(vsphere_dvs.ConfigurationError, ml2_plugin.Ml2Plugin)
        self.assertIn("username", str(exc))

    def test_untrusted_certificate_at_start_does_not_stop_neutron(self):
        """Without ca_file the system trust store does not know the lab's certificate:
        logged with the reason; Neutron (which may serve other hypervisors) still starts."""
        _override(ca_file=None)
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            plugin = ml2_plugin.Ml2Plugin()
        driver = plugin.mechanism_manager.mech_drivers["vsphere_dvs"].obj
        self.addCleanup(driver.backend.stop)
        text = base.log_lines(logs.records)
        self.assertIn("certificate does not verify", text)
        self.assertIn("(system trust store)", text)

    def test_unreadable_ca_file_refuses_to_start(self):
        _override(ca_file="/nonexistent/ca.pem")
        exc = self.assertRaises(vsphere_dvs.ConfigurationError, ml2_plugin.Ml2Plugin)
        self.assertIn("ca_file", str(exc))

    def test_vcenter_unreachable_at_start_does_not_stop_neutron(self):
        _override(vcenter_url=f"https://127.0.0.1:{free_port()}/sdk", api_retry_count=1)
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            plugin = ml2_plugin.Ml2Plugin()
        driver = plugin.mechanism_manager.mech_drivers["vsphere_dvs"].obj
        self.addCleanup(driver.backend.stop)
        self.assertIn("will retry on the first bind", base.log_lines(logs.records))


class TestWrongPasswordAtStart(base.VSphereDVSTestCase):
    """A refused login at start is logged; Neutron runs and binds fail with the reason."""

    shared = _SIM

    def vsphere_options(self):
        return {**super().vsphere_options(), "password": "not-the-password"}

    def test_bind_fails_saying_why(self):
        net = self.make_network()
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        self.assertNotBound(port)
        self.assertIn("wrong user name or password", base.log_lines(logs.records))
        self.assertEqual([], self.vc.port_groups_of(net["id"]))


class TestVCenterFaults(base.VSphereDVSTestCase):
    """Each test has a simulator of its own, as each breaks it.

    ML2 tries a failed binding up to ten times; with one attempt per vCenter call
    (api_retry_count = 1) a vCenter that refuses connections fails each try at once.
    """

    own_simulator = True

    def vsphere_options(self):
        return {**super().vsphere_options(), "api_retry_count": 1}

    def levels(self, port_id, host=base.HOST_C0):
        return ml2_db.get_binding_level_objs(self.context, port_id, host)

    def assertCleanFailure(self, port, network_id, vc=None):
        """binding_failed with nothing recorded in Neutron nor made in vCenter."""
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port["id"], port[portbindings.HOST_ID]))
        self.assertEqual([], (vc or self.vc).port_groups_of(network_id))

    def reconnect(self):
        """A new pyVmomi reader after the simulator restarted (credentials may differ)."""
        vc = base.VCenter(self.sim)
        self.addCleanup(vc.close)
        return vc

    def no_holdoff(self):
        """Let every ML2 bind attempt reach vCenter (no fail-fast after an outage)."""
        backend = self.mech.backend
        backend.settings = dataclasses.replace(backend.settings, unreachable_holdoff=0.0)

    def test_hung_vcenter_fails_fast_after_the_first_attempt(self):
        """vCenter accepts connections but never answers: the first of ML2's ten bind
        attempts waits out the timeout, the others fail at once (unreachable_holdoff)."""
        backend = self.mech.backend
        backend.session.close()
        backend.session = VCenterSession(dataclasses.replace(
            backend.session.config, request_timeout=1.0))
        net = self.make_network()
        pid = self.sim.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        start = time.monotonic()
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        elapsed = time.monotonic() - start
        os.kill(pid, signal.SIGCONT)
        self.assertNotBound(port)
        text = base.log_lines(logs.records)
        self.assertIn("not retried for another", text)
        # Without the hold-off: ten attempts of at least one 1 s timeout each.
        self.assertLess(elapsed, 8.0, text)

    def wrap_wait_for_task(self, before):
        """Run ``before()`` when the driver starts waiting for its first vCenter task.

        A mock used only to pick the moment of a fault that the real simulator then
        produces (crash or freeze); the driver's real ``wait_for_task`` still runs.
        """
        session = self.mech.backend.session
        real_wait = session.wait_for_task
        calls = []

        def wait(task, what):
            calls.append(what)
            if len(calls) == 1:
                before()
            return real_wait(task, what)

        self.useFixture(fixtures.MockPatchObject(session, "wait_for_task", side_effect=wait))
        return calls

    def test_vcenter_crashes_mid_bind(self):
        """vCenter dies after accepting the create: binding_failed, nothing recorded."""
        self.no_holdoff()
        net = self.make_network()
        calls = self.wrap_wait_for_task(lambda: base.crash_simulator(self.sim))
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        self.assertTrue(calls and calls[0].startswith("create port group"), calls)
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port["id"]))
        self.assertIn("unreachable", base.log_lines(logs.records))
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.show_port(port["id"])["status"])

        # vCenter back (the simulator restarts empty): a new bind of the port works.
        self.sim.restart_with()
        vc = self.reconnect()
        self.assertEqual([], vc.port_groups_of(net["id"]))
        again = self.update_port_host(port["id"], base.HOST_C1)
        self.vc = vc
        self.assertBoundToPortGroup(again, net)

    def test_vcenter_freezes_mid_bind_then_recovers(self):
        """vCenter stops answering after accepting the create, then comes back.

        The call that was cut off is retried on a fresh connection (or, failing that,
        ML2's next try adopts the port group vCenter made meanwhile - whole and ours):
        one port group, no leftovers.
        """
        # The driver's bind session, with a short answer timeout so the test is quick
        # (the port group watch keeps its own session and the configured timeout).
        backend = self.mech.backend
        self.no_holdoff()      # this test wants ML2's next try in the same request to reach vCenter
        backend.session.close()
        backend.session = VCenterSession(dataclasses.replace(
            backend.session.config, request_timeout=1.0))
        net = self.make_network(segmentation_id=2222)
        pid = self.sim.pid

        def freeze():
            os.kill(pid, signal.SIGSTOP)
            self.addCleanup(os.kill, pid, signal.SIGCONT)
            # ...and thaw once the driver's call has timed out.
            timer = threading.Timer(2.0, os.kill, (pid, signal.SIGCONT))
            timer.start()
            self.addCleanup(timer.cancel)

        calls = self.wrap_wait_for_task(freeze)
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            port = self.make_port(net["id"])
        text = base.log_lines(logs.records)
        self.assertIn("timed out", text)                 # the call that was cut off...
        self.assertIn("connecting again", text)          # ...is retried on a new connection
        self.assertGreaterEqual(len(calls), 1)
        pg = self.assertBoundToPortGroup(port, net, vlan=2222)
        self.assertEqual([pg], self.vc.port_groups_of(net["id"]))
        self.assertEqual(["vsphere_dvs"], [lvl.driver for lvl in self.levels(port["id"])])

    def test_wrong_password(self):
        net = self.make_network()
        old_password = self.sim.password
        base.crash_simulator(self.sim)
        self.sim.restart_with(password="a-different-password")
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        text = base.log_lines(logs.records)
        self.assertIn("wrong user name or password", text)
        self.assertIn(self.sim.username, text)
        self.assertNotIn("a-different-password", text)
        self.assertNotIn(old_password, text)
        self.assertCleanFailure(port, net["id"], self.reconnect())

    def test_untrusted_certificate(self):
        net = self.make_network()
        trusted = str(self.sim.ca_file)
        other = self.useFixture(fixtures.TempDir()).path
        cert, key = os.path.join(other, "other-cert.pem"), os.path.join(other, "other-key.pem")
        make_self_signed(cert, key)
        base.crash_simulator(self.sim)
        self.sim.restart_with(cert=cert, key=key)
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        text = base.log_lines(logs.records)
        self.assertIn("certificate does not verify", text)
        self.assertIn(trusted, text)
        self.assertCleanFailure(port, net["id"], self.reconnect())   # trusts the new one


class TestSessionExpiry(base.VSphereDVSTestCase):
    shared = _SIM

    def test_relogin_after_session_terminated(self):
        net = self.make_network()
        self.assertBoundToPortGroup(self.make_port(net["id"]), net)   # logged in
        old_key = self.mech.backend.session.session_key()
        self.assertIn(old_key, self.vc.session_keys())
        other = self.make_network()       # not cached: the bind must ask vCenter
        # From the termination on: the port group watch shares the login and may be the
        # one that notices the ended session and logs in again, before the bind.
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            self.vc.terminate_session(old_key)
            self.assertNotIn(old_key, self.vc.session_keys())
            port = self.make_port(other["id"])
        self.assertBoundToPortGroup(port, other)
        # Noticed and said, by the bind ("session expired; logging in again") or by the
        # watch that got there first (it drops the login; the bind then logs in anew).
        text = base.log_lines(logs.records)
        self.assertTrue("session expired" in text or "Port group watch interrupted" in text,
                        text)
        new_key = self.mech.backend.session.session_key()
        self.assertNotEqual(old_key, new_key)
        self.assertIn(new_key, self.vc.session_keys())


class TestInsecure(base.VSphereDVSTestCase):
    """insecure = true: no certificate check (the lab certificate is not trusted), a warning."""

    shared = _SIM

    def vsphere_options(self):
        return {**super().vsphere_options(), "ca_file": None, "insecure": True}

    def start_plugin(self):
        with self.assertLogs(base.LOGGER, "WARNING") as logs:
            super().start_plugin()
        self.start_logs = base.log_lines(logs.records)

    def test_warns_and_connects(self):
        self.assertIn("certificate verification is OFF", self.start_logs)
        self.assertIn(self.sim.url, self.start_logs)
        net = self.make_network()
        self.assertBoundToPortGroup(self.make_port(net["id"]), net)
