"""The port group guard (``db/pg_guard.py``) on a real MariaDB and the real vCenter simulator.

A release of a network's port group (the journal worker, the sweep) and a bind in
another process must never cross: either the release sees the bind and keeps the
port group, or the bind waits for the release and makes the port group again - it
never answers a ``pg_id`` that is deleted a moment later.

The scenarios run in a child process (Neutron's database layer is configured once
per process, and the unit tests in the same run use SQLite), with two backends
on the simulator - "the API process" (binds, with its port group watch) and
"the periodic workers" (releases) - and two threads, each on its own database
connection.  ML2's own steps are written as ML2 writes them: the binding host of
a port's active binding is committed before ``bind_port``; an inactive binding
(``POST /ports/{id}/bindings``) is committed after it, bumping the port's
revision (Neutron's revision plugin).  The interleavings are forced by pausing
one side at the point that matters (a sleep after the release's "unused" check;
a sleep inside the bind's guard transaction): nothing of vCenter or MariaDB is
mocked.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from own_mariadb import own_database

from networking_dvs_fabric.lab import mariadb as lab_mariadb
from networking_dvs_fabric.lab import vcsim as vcsim_mod

pytestmark = [
    pytest.mark.skipif(lab_mariadb.find_mariadbd() is None,
                       reason="mariadbd not installed (apt-get install mariadb-server)"),
    pytest.mark.skipif(shutil.which("go") is None or
                       not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir(),
                       reason="needs the Debian packages golang-go and "
                              "golang-github-vmware-govmomi-dev"),
]

HOLD_S = 1.5          # how long one side pauses while the other one comes

CHILD = textwrap.dedent("""
    import datetime, json, sys, threading, time, uuid
    from oslo_config import cfg
    from oslo_db import options
    from oslo_utils.timeutils import utcnow
    url, vc, hold_s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    options.set_defaults(cfg.CONF, connection=url)
    cfg.CONF([], project="dvsf-pg-guard-test", default_config_files=[])
    import sqlalchemy as sa
    from neutron.db import models_v2
    from neutron.db.migration.models import head  # noqa: F401 - every model, for create_all
    from neutron.db.port_security import models as psec_models
    from neutron.plugins.ml2 import models as ml2_models
    from neutron_lib import context as n_context
    from neutron_lib.db import api as db_api
    from neutron_lib.db import model_base
    from networking_dvs_fabric import names
    from networking_dvs_fabric.db import models, pg_guard
    from networking_dvs_fabric.journal.common import Entry
    from networking_dvs_fabric.vcenter.port_group_worker import PortGroupRelease
    from networking_dvs_fabric.vcenter import usage
    from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
    from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession

    engine = sa.create_engine(url)
    model_base.BASEV2.metadata.create_all(engine)
    engine.dispose()

    PHYSNET, DVS, HOST, ELSEWHERE = "physnet-dvs", "DVS0", "compute-c0", "kvm-1"

    def make_backend():
        config = VCenterConfig(url=vc["url"], username=vc["username"],
                               password=vc["password"], ca_file=vc["ca_file"],
                               request_timeout=10.0)
        return VSphereBackend(
            BackendSettings(datacenter="DC0", dvs_mappings={PHYSNET: DVS},
                            host_mappings={HOST: "DC0_C0"}),
            lambda: VCenterSession(config))

    api, workers = make_backend(), make_backend()   # two processes, in effect
    assert api.wait_cache_ready(20), "the API backend's port group watch never got ready"
    HOSTS = workers.binding_hosts(DVS)
    assert HOST in HOSTS

    def ctx():
        return n_context.get_admin_context()

    def keys_in_vcenter():
        return {pg.key for pg in workers.port_groups(DVS)}

    def new_network():
        net = str(uuid.uuid4())
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.add(models_v2.Network(id=net, name="n", project_id="p",
                                            status="ACTIVE", admin_state_up=True))
        return net

    def new_port(net, host):
        port = str(uuid.uuid4())
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.add(models_v2.Port(
                id=port, network_id=net, admin_state_up=True, status="DOWN",
                mac_address="fa:16:3e:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3]),
                device_id="vm", device_owner="compute:nova", project_id="p"))
            c.session.add(ml2_models.PortBinding(
                port_id=port, host=host, vif_type="unbound", vnic_type="normal",
                profile="", vif_details="", status="ACTIVE"))
            # Port security off: the port's set is "open", the port group bind() asks
            # for (issue 13: one port group per set of a network's ports).
            c.session.add(psec_models.PortSecurityBinding(port_id=port,
                                                          port_security_enabled=False))
        return port

    def set_host(port, host):
        # ML2's update_port: the binding host is committed before bind_port runs.
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.query(ml2_models.PortBinding).filter_by(
                port_id=port, status="ACTIVE").update({"host": host})

    def bump_revision(c, port):
        sa_id = c.session.query(models_v2.Port.standard_attr_id).filter_by(id=port).scalar()
        c.session.execute(sa.text("UPDATE standardattributes SET revision_number = "
                                  "revision_number + 1 WHERE id = :i"), {"i": sa_id})

    def commit_inactive_binding(port, host):
        # ML2's create_port_binding, after bind_port: the new row, and the revision bump.
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.add(ml2_models.PortBinding(
                port_id=port, host=host, vif_type="dvs", vnic_type="normal",
                profile="", vif_details="", status="INACTIVE"))
            bump_revision(c, port)

    def delete_port(port):
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.query(models_v2.Port).filter_by(id=port).delete()

    def release(net):
        return usage.release_if_unused(ctx(), workers, DVS, net, HOSTS)

    def bind(net, port, vlan):
        return usage.ensure_for_bind(ctx(), api, PHYSNET, net, "n", vlan, port)

    def verdict(net):
        # The port group journal worker's handler, on an entry for (net, DVS).
        entry = Entry(resource_type=names.RESOURCE_PORT_GROUP,
                      resource_id=names.port_group_resource(net, DVS), row_ids=(1,),
                      operations=("release",), attempts=0, first_created_at=utcnow())
        found = PortGroupRelease(workers)(ctx(), [entry])[0]
        return None if found is None else [type(found).__name__, str(found)]

    out = {}

    # 1. The release finds the port group unused and, before it deletes it, a port
    #    is bound in the API process (its cache still has the port group).  The bind
    #    waits for the release, sees that its port group was deleted, makes it again.
    net = new_network()
    first = api.ensure_port_group(PHYSNET, net, "n", 301)
    port = new_port(net, "")
    deadline = time.monotonic() + 10
    while api.cached_port_group(PHYSNET, net) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    checked = threading.Event()
    real_release = workers.release_port_group

    def slow_release(dvs, network_id, still_used, **callbacks):
        def paused(pg=None):
            used = still_used(pg)
            if pg is None and not used:
                checked.set()
                time.sleep(hold_s)      # found unused; the bind comes now
            return used
        return real_release(dvs, network_id, paused, **callbacks)
    workers.release_port_group = slow_release
    result = {}
    releaser = threading.Thread(target=lambda: result.update(outcome=release(net)))
    releaser.start()
    assert checked.wait(30)
    set_host(port, HOST)
    t0 = time.monotonic()
    answered = bind(net, port, 301)
    waited = time.monotonic() - t0
    releaser.join()
    workers.release_port_group = real_release
    present = keys_in_vcenter()
    out["release_then_bind"] = {
        "outcome": result["outcome"], "first": first.pg_key, "answered": answered.pg_key,
        "answered_exists": answered.pg_key in present, "first_exists": first.pg_key in present,
        "waited": waited, "then": release(net),
        "still_exists": answered.pg_key in keys_in_vcenter()}

    # 2. A bind whose binding ML2 commits only after bind_port (the inactive binding of
    #    a live migration; the port's active binding is on a host off this DVS).
    net = new_network()
    port = new_port(net, ELSEWHERE)
    answered = bind(net, port, 302)
    steps = [release(net), answered.pg_key in keys_in_vcenter()]
    out["journal_verdict_while_bind_runs"] = verdict(net)
    commit_inactive_binding(port, HOST)
    steps += [release(net), answered.pg_key in keys_in_vcenter()]
    delete_port(port)
    steps += [release(net), answered.pg_key in keys_in_vcenter()]
    out["bind_not_committed"] = steps

    def guard_rows(net):
        c = ctx()
        with db_api.CONTEXT_READER.using(c):
            return c.session.query(models.PortGroupGuard).filter_by(network_id=net).count()
    rows = [guard_rows(net)]
    c = ctx()
    with db_api.CONTEXT_WRITER.using(c):
        c.session.query(models_v2.Network).filter_by(id=net).delete()
    rows += [release(net), guard_rows(net)]
    out["guard_row_of_a_deleted_network"] = rows

    # 3. ... and whose binding is never committed (PortBindingError): kept for GRACE
    #    only.  The bind's time is moved back, as if GRACE had passed.
    net = new_network()
    port = new_port(net, ELSEWHERE)
    answered = bind(net, port, 303)
    steps = [release(net)]
    c = ctx()
    with db_api.CONTEXT_WRITER.using(c):
        c.session.query(models.PortGroupGuard).filter_by(network_id=net).update(
            {"bound_at": utcnow() - pg_guard.GRACE
             - datetime.timedelta(seconds=1)})
    steps += [release(net), answered.pg_key in keys_in_vcenter()]
    out["bind_never_committed"] = steps

    # 4. A bind holds the guard row (inside its transaction) when a release comes: the
    #    release waits for it and then keeps the port group.
    net = new_network()
    port = new_port(net, ELSEWHERE)
    locked = threading.Event()
    real_revision = pg_guard._revision

    def slow_revision(session, port_id):
        if threading.current_thread().name == "binder":
            locked.set()
            time.sleep(hold_s)          # inside the bind's transaction, row locked
        return real_revision(session, port_id)
    pg_guard._revision = slow_revision
    got = {}
    binder = threading.Thread(target=lambda: got.update(b=bind(net, port, 304)),
                              name="binder")
    binder.start()
    bind_held_row = locked.wait(10)
    t0 = time.monotonic()
    outcome = release(net)
    waited = time.monotonic() - t0
    binder.join()
    pg_guard._revision = real_revision
    out["bind_then_release"] = {"held": bind_held_row, "outcome": outcome, "waited": waited,
                                "exists": got["b"].pg_key in keys_in_vcenter()}

    out["dialect"] = ctx().session.get_bind().dialect.name
    api.stop()
    workers.stop()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A fresh database of our own (dropped at the end)."""
    with own_database(tmp_path_factory, "pgguard") as db:
        yield db


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    with vcsim_mod.VCenterSimulator(tmp_path_factory.mktemp("vcsim-pg-guard")) as simulator:
        yield simulator


def test_a_bind_and_a_port_group_release_never_cross(database, sim):
    vc = {"url": sim.url, "username": sim.username, "password": sim.password,
          "ca_file": str(sim.ca_file)}
    run = subprocess.run([sys.executable, "-c", CHILD, database.url, json.dumps(vc),
                          str(HOLD_S)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["dialect"] == "mysql"

    # 1. Release checked "unused", then the bind came, then the release deleted.
    one = out["release_then_bind"]
    assert one["outcome"] == "released"
    assert not one["first_exists"], "the release did not delete the port group"
    assert one["answered"] != one["first"], \
        "the bind answered the port group the release deleted under it"
    assert one["answered_exists"], "the bind answered a port group that does not exist"
    assert one["waited"] >= HOLD_S * 0.5, f"the bind did not wait for the release: {one}"
    assert (one["then"], one["still_exists"]) == ("in_use", True)

    # 2. Kept while ML2 has not committed the bind, then by Neutron's binding row;
    #    released once the port is gone.
    assert out["bind_not_committed"] == ["bind_running", True, "in_use", True,
                                         "released", False]
    # The guard row stays while the network exists and goes with its last release.
    assert out["guard_row_of_a_deleted_network"] == [1, "released", 0]
    # The journal entry of that release is retried (not completed) meanwhile.
    kind, message = out["journal_verdict_while_bind_runs"]
    assert kind == "TemporaryFailure" and "not committed" in message, message

    # 3. A bind never committed keeps the port group for GRACE only.
    assert out["bind_never_committed"] == ["bind_running", "released", False]

    # 4. The release waited for the bind's transaction and then saw the bind.
    four = out["bind_then_release"]
    assert four["held"], "the bind never took the guard row"
    assert four["outcome"] == "bind_running", four
    assert four["exists"]
    assert four["waited"] >= HOLD_S * 0.5, f"the release did not wait for the bind: {four}"
