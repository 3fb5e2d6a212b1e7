"""The dynamic-segment lock (``ml2/segments.py``) on a real MariaDB with Neutron's schema.

A bind that has been handed a network's dynamic VLAN segment and a release of that
segment by a departing port must never cross: either the release sees the bind's
work and keeps the segment, or the bind sees the release and asks for a new one.
The scenarios run in a child process (Neutron's database layer is configured once
per process, and the unit tests in this run use SQLite), two threads each on its
own connection, with the interleavings forced by holding the lock in one of them.
The ``release`` given to the module deletes the segment with Neutron's own
``segments_db.delete_network_segment`` - what ML2's release does after giving the
VLAN back to the pool, which these tests do not need.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from own_mariadb import own_database

from networking_dvs_fabric.lab import mariadb as lab_mariadb

pytestmark = pytest.mark.skipif(
    lab_mariadb.find_mariadbd() is None,
    reason="mariadbd not installed (apt-get install mariadb-server)")

HOLD_S = 1.0          # how long the first thread keeps the segment locked

CHILD = textwrap.dedent("""
    import json, sys, threading, time, uuid
    from oslo_config import cfg
    from oslo_db import options
    url, hold_s = sys.argv[1], float(sys.argv[2])
    options.set_defaults(cfg.CONF, connection=url)
    cfg.CONF([], project="dvsf-segment-test", default_config_files=[])
    import sqlalchemy as sa
    from neutron.db import models_v2, segments_db
    from neutron.db.migration.models import head  # noqa: F401 - every model, for create_all
    from neutron.db.models import segment as segment_models
    from neutron.plugins.ml2 import models as ml2_models
    from neutron_lib import context as n_context
    from neutron_lib.db import api as db_api
    from neutron_lib.db import model_base
    from networking_dvs_fabric.ml2 import segments

    engine = sa.create_engine(url)
    model_base.BASEV2.metadata.create_all(engine)
    engine.dispose()

    def ctx():
        return n_context.get_admin_context()

    NET = str(uuid.uuid4())
    P1, P2 = str(uuid.uuid4()), str(uuid.uuid4())

    def release_if_unused(seg, leaving):
        # The release runs on the context it is given, as ML2's does (PortContext's
        # release_dynamic_segment uses the same plugin context): one transaction.
        rc = ctx()
        return segments.release_if_unused(
            rc, seg, leaving, lambda s: segments_db.delete_network_segment(rc, s))

    def new_segment(vlan):
        seg = str(uuid.uuid4())
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.add(segment_models.NetworkSegment(
                id=seg, network_id=NET, network_type="vlan", physical_network="dvs",
                segmentation_id=vlan, is_dynamic=True, segment_index=vlan))
        return seg

    def segment_exists(seg):
        c = ctx()
        with db_api.CONTEXT_READER.using(c):
            return c.session.query(segment_models.NetworkSegment.id).filter_by(
                id=seg).first() is not None

    def set_binding(port, vif_type):
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            c.session.query(ml2_models.PortBinding).filter_by(port_id=port).update(
                {"vif_type": vif_type})

    def add_level(c, port, seg):
        c.session.add(ml2_models.PortBindingLevel(
            port_id=port, host="esx-1", level=1, driver="vsphere_dvs", segment_id=seg))

    def drop_levels(port):
        c = ctx()
        with db_api.CONTEXT_WRITER.using(c):
            for level in c.session.query(ml2_models.PortBindingLevel).filter_by(port_id=port):
                c.session.delete(level)

    c = ctx()
    with db_api.CONTEXT_WRITER.using(c):
        c.session.add(models_v2.Network(id=NET, name="n", project_id="p", status="ACTIVE",
                                        admin_state_up=True))
    with db_api.CONTEXT_WRITER.using(c):
        for port, mac in ((P1, "fa:16:3e:00:00:01"), (P2, "fa:16:3e:00:00:02")):
            c.session.add(models_v2.Port(id=port, network_id=NET, mac_address=mac,
                                         admin_state_up=True, status="ACTIVE",
                                         device_id="vm", device_owner="compute:nova",
                                         project_id="p"))
            c.session.add(ml2_models.PortBinding(port_id=port, host="esx-1", vif_type="dvs",
                                                 vnic_type="normal", profile="",
                                                 vif_details="", status="ACTIVE"))
    out = {}

    # 1. A level still goes through the segment: kept.
    seg = new_segment(101)
    with db_api.CONTEXT_WRITER.using(c):
        add_level(c, P2, seg)
    out["level_through_it"] = [release_if_unused(seg, P1),
                               segment_exists(seg)]
    drop_levels(P2)

    # 2. No level, but P2 is being bound (host stored, vif_type still unbound): kept.
    set_binding(P2, "unbound")
    out["bind_running"] = [release_if_unused(seg, P1),
                           segment_exists(seg)]
    # 3. ... unless the port being bound is the one leaving (a move): released, and
    #    a bind handed that segment afterwards is told it is gone.
    out["leaving_port_rebinding"] = [
        release_if_unused(seg, P2), segment_exists(seg),
        segments.hold(ctx(), seg, P2)[0]]
    set_binding(P2, "dvs")

    # 4. A binder holds the lock and commits its level; a release that comes meanwhile
    #    waits for it and then sees the level: kept.
    seg = new_segment(102)
    locked = threading.Event()
    def binder():
        b = ctx()
        with db_api.CONTEXT_WRITER.using(b):
            assert segments._lock(b.session, seg)
            locked.set()
            time.sleep(hold_s)
            add_level(b, P2, seg)
    t = threading.Thread(target=binder)
    t.start()
    locked.wait(30)
    t0 = time.monotonic()
    outcome = release_if_unused(seg, P1)
    out["release_during_bind"] = [outcome, segment_exists(seg), time.monotonic() - t0]
    t.join()
    drop_levels(P2)

    # 5. A release is under way (slow, inside its transaction); a bind handed the
    #    segment just before takes the lock, waits, and is told the segment is gone.
    seg = new_segment(103)
    releasing = threading.Event()
    def slow_release(rc):
        def run(s):
            segments_db.delete_network_segment(rc, s)
            releasing.set()
            time.sleep(hold_s)
        return run
    results = {}
    def releaser():
        rc = ctx()
        results["outcome"] = segments.release_if_unused(rc, seg, P1, slow_release(rc))
    t = threading.Thread(target=releaser)
    t.start()
    releasing.wait(30)
    t0 = time.monotonic()
    held, active_host = segments.hold(ctx(), seg, P2)
    out["bind_during_release"] = [held, time.monotonic() - t0, active_host]
    t.join()
    out["bind_during_release"].append(results["outcome"])
    out["dialect"] = ctx().session.get_bind().dialect.name
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A fresh database of our own (dropped at the end)."""
    with own_database(tmp_path_factory, "seglock") as db:
        yield db


def test_bind_and_release_of_a_dynamic_segment_never_cross(database):
    run = subprocess.run([sys.executable, "-c", CHILD, database.url, str(HOLD_S)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["dialect"] == "mysql"
    assert out["level_through_it"] == ["in_use", True]
    assert out["bind_running"] == ["bind_running", True]
    assert out["leaving_port_rebinding"] == ["released", False, False]

    outcome, exists, waited = out["release_during_bind"]
    assert (outcome, exists) == ("in_use", True)
    assert waited >= HOLD_S * 0.5, f"the release did not wait for the binder's lock: {waited}"

    held, waited, active_host, release_outcome = out["bind_during_release"]
    assert release_outcome == "released"
    assert held is False, "a bind was allowed to use a segment being released"
    assert waited >= HOLD_S * 0.5, f"the bind did not wait for the release's lock: {waited}"
    assert active_host == "esx-1"
