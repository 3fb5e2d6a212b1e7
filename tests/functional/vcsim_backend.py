"""A VSphereBackend on the real vCenter simulator, as the drivers build theirs."""
from __future__ import annotations

import contextlib
from typing import Iterator

from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession

DVS = "DVS0"
PHYSNET = "physnet-dvs"


@contextlib.contextmanager
def started_backend(sim: VCenterSimulator) -> Iterator[VSphereBackend]:
    """DVS0 on ``physnet-dvs``, cluster DC0_C0 as ``compute-c0``; its port group watch
    ready before it is handed out, stopped after."""
    config = VCenterConfig(url=sim.url, username=sim.username, password=sim.password,
                           ca_file=str(sim.ca_file), request_timeout=10.0)
    settings = BackendSettings(datacenter="DC0", dvs_mappings={PHYSNET: DVS},
                               host_mappings={"compute-c0": "DC0_C0"})
    made = VSphereBackend(settings, lambda: VCenterSession(config))
    made.start()
    try:
        assert made.wait_cache_ready(10)
        yield made
    finally:
        made.stop()
