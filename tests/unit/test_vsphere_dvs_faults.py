"""vsphere_dvs when vCenter or its configuration is wrong: start-up checks, vCenter down,
wrong password, untrusted certificate, expired session, insecure mode.

Tests that break the simulator (stop it, change its password or certificate) get a
fresh one of their own (``own_simulator``); the others share the module's.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from unittest import mock

import dvs_ml2_base as base
import fixtures
from neutron.plugins.ml2 import db as ml2_db
from neutron.plugins.ml2 import plugin as ml2_plugin
from neutron_lib.api.definitions import portbindings
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

    def test_untrusted_certificate_at_start(self):
        """Without ca_file the system trust store does not know the lab's certificate."""
        _override(ca_file=None)
        self.assertRefusesToStart(vsphere_dvs.StartError, "certificate",
                                  "(system trust store)")

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
    """Each test has a simulator of its own, as each breaks it."""

    own_simulator = True

    def vsphere_options(self):
        # Fail fast: one retry after 0.5 s.
        return {**super().vsphere_options(), "api_retry_count": 2}

    def levels(self, port_id, host=base.HOST_C0):
        return ml2_db.get_binding_level_objs(self.context, port_id, host)

    def assertCleanFailure(self, port, network_id, vc=None):
        """binding_failed with nothing recorded in Neutron nor made in vCenter."""
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port["id"], port[portbindings.HOST_ID]))
        self.assertEqual([], (vc or self.vc).port_groups_of(network_id))

    def test_vcenter_stopped_then_back(self):
        self.assertTrue(self.mech.backend.wait_cache_ready(5))
        net = self.make_network()
        self.sim.stop()
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port["id"]))
        self.assertIn("unreachable", base.log_lines(logs.records))

        self.sim.restart_with()         # same port, same credentials
        self.vc = base.VCenter(self.sim)
        self.addCleanup(self.vc.close)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))
        again = self.update_port_host(port["id"], base.HOST_C1)
        self.assertBoundToPortGroup(again, net)

    def test_vcenter_stops_answering_mid_bind(self):
        """vCenter freezes after accepting the create: the bind fails, nothing half-made.

        The fault is injected at an exact moment by wrapping the driver's real
        ``wait_for_task`` (a mock used only for timing): it SIGSTOPs the simulator
        and lets the real call run into the timeout.
        """
        # The driver's bind session, with a short answer timeout so the test is quick
        # (the port group watch keeps its own session and the configured timeout).
        backend = self.mech.backend
        backend.session.close()
        backend.session = VCenterSession(dataclasses.replace(
            backend.session.config, request_timeout=2.0, retries=1))
        net = self.make_network(segmentation_id=2222)
        session = backend.session
        real_wait = session.wait_for_task
        frozen = []

        def freeze_then_wait(task, what):
            if not frozen:
                os.kill(self.sim.pid, signal.SIGSTOP)
                frozen.append(True)
                self.addCleanup(os.kill, self.sim.pid, signal.SIGCONT)
            return real_wait(task, what)

        with mock.patch.object(session, "wait_for_task", side_effect=freeze_then_wait):
            with self.assertLogs(base.LOGGER, "ERROR") as logs:
                port = self.make_port(net["id"])
        os.kill(self.sim.pid, signal.SIGCONT)
        self.assertTrue(frozen)
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port["id"]))
        self.assertIn("unreachable", base.log_lines(logs.records))

        # vCenter had the request: whatever it made is whole and ours...
        made = self.vc.port_groups_of(net["id"])
        self.assertLessEqual(len(made), 1)
        for pg in made:
            self.assertIn(base.MARKER, pg.description)
            self.assertEqual(2222, pg.vlan)
        # ...and the next bind adopts it rather than making a second one.
        again = self.update_port_host(port["id"], base.HOST_C1)
        pg = self.assertBoundToPortGroup(again, net, vlan=2222)
        self.assertEqual([pg], self.vc.port_groups_of(net["id"]))
        if made:
            self.assertEqual(made[0].key, pg.key)

    def test_wrong_password(self):
        net = self.make_network()
        self.sim.restart_with(password="a-different-password")
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        text = base.log_lines(logs.records)
        self.assertIn("wrong user name or password", text)
        self.assertIn(self.sim.username, text)
        self.assertNotIn("a-different-password", text)
        self.assertNotIn(self.vsphere_options()["password"], text)
        vc = base.VCenter(self.sim)
        self.addCleanup(vc.close)
        self.assertCleanFailure(port, net["id"], vc)

    def test_untrusted_certificate(self):
        net = self.make_network()
        other = self.useFixture(fixtures.TempDir()).path
        cert, key = os.path.join(other, "other-cert.pem"), os.path.join(other, "other-key.pem")
        make_self_signed(cert, key)
        self.sim.restart_with(cert=cert, key=key)
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"])
        text = base.log_lines(logs.records)
        self.assertIn("certificate", text)
        self.assertIn(self.vsphere_options()["ca_file"], text)
        vc = base.VCenter(self.sim)      # trusts the new certificate
        self.addCleanup(vc.close)
        self.assertCleanFailure(port, net["id"], vc)


class TestSessionExpiry(base.VSphereDVSTestCase):
    shared = _SIM

    def test_relogin_after_session_terminated(self):
        net = self.make_network()
        self.assertBoundToPortGroup(self.make_port(net["id"]), net)   # logged in
        old_key = self.mech.backend.session.session_key()
        self.assertIn(old_key, self.vc.session_keys())
        self.vc.terminate_session(old_key)
        self.assertNotIn(old_key, self.vc.session_keys())

        other = self.make_network()       # not cached: the bind must ask vCenter
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            port = self.make_port(other["id"])
        self.assertBoundToPortGroup(port, other)
        self.assertIn("session expired", base.log_lines(logs.records))
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
