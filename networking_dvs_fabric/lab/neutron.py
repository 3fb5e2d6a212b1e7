"""Neutron for the lab: configs, database schema, the API under uWSGI, the periodic workers.

Everything runs from the same Python environment as ``dvs-fabric`` itself, so
any mechanism driver installed there can be named.
"""
from __future__ import annotations

import configparser
import dataclasses
import json
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

import yaml

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.procs import Daemon, LabError, free_port, wait_until

BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class VCenterAccess:
    url: str
    username: str
    password: str
    ca_file: str


def write_ini(path: Path, sections: Mapping[str, Mapping[str, str]]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    for section, values in sections.items():
        parser[section] = dict(values)
    with open(path, "w") as handle:
        parser.write(handle)
    path.chmod(0o600)


def write_configs(workdir: Path, db_url: str, vcenter: VCenterAccess,
                  mechanism_drivers: str, mode: str, leaf_endpoints: Mapping[str, str],
                  extra: Mapping[str, Mapping[str, str]] | None = None,
                  second_dvs: bool = False) -> list[Path]:
    """neutron.conf, ml2_conf.ini and the fabric topology; returns the config file paths.

    ``second_dvs``: DC0_C1 is on DVS1 (``lab/second_dvs.py``): its mapping, its
    VLAN range and its hosts' attachments name it."""
    workdir.mkdir(parents=True, exist_ok=True)
    topology_file = workdir / "fabric-topology.yaml"
    topology_file.write_text(yaml.safe_dump(
        topology.fabric_topology(dict(leaf_endpoints), second_dvs), sort_keys=False))
    fabric = "fabric_hwvtep" in mechanism_drivers.split(",")
    wakeup = f"127.0.0.1:{free_port(udp=True)}"
    neutron_conf = workdir / "neutron.conf"
    ml2_conf = workdir / "ml2_conf.ini"
    # noauth makes every caller an admin, but Neutron 29 leaves the port bindings
    # API (Nova's live migration) to the service role alone: let the lab's admin do
    # what Nova does.
    policy_file = workdir / "policy.yaml"
    policy_file.write_text("".join(
        f'"{rule}": "rule:context_is_admin or role:service"\n'
        for rule in ("create_port_binding", "delete_port_binding", "activate",
                     "get_port_binding")))
    write_ini(neutron_conf, {
        "DEFAULT": {"core_plugin": "ml2", "service_plugins": "", "auth_strategy": "noauth",
                    "transport_url": "fake:/", "state_path": str(workdir / "state"),
                    "debug": "false", "api_workers": "2",
                    "api_paste_config": str(Path(sys.prefix) / "etc" / "neutron" /
                                            "api-paste.ini"),
                    # No Nova here: nothing to tell about ports (FakeNova reads vCenter).
                    "notify_nova_on_port_status_changes": "false",
                    "notify_nova_on_port_data_changes": "false"},
        # Neutron asks placement about every segment it deletes, whatever its options
        # say (see lab/placement.py); a keystone-less cloud names its placement so.
        "placement": {"auth_type": "none",
                      "endpoint": f"http://127.0.0.1:{free_port()}"},
        "database": {"connection": db_url, "max_retries": "10"},
        "oslo_concurrency": {"lock_path": str(workdir / "locks")},
        "oslo_policy": {"policy_file": str(policy_file)},
        # A test bed: benchmarks and tests create more than the default 100 networks.
        "quotas": {"quota_network": "-1", "quota_subnet": "-1", "quota_port": "-1"},
    })
    compute_hosts = topology.compute_hosts()
    sections: dict[str, dict[str, str]] = {
        "ml2": {"type_drivers": "flat,vlan,vxlan",
                "project_network_types": "vxlan" if fabric else "vlan",
                "mechanism_drivers": mechanism_drivers,
                "extension_drivers": "port_security"},
        "ml2_type_vlan": {"network_vlan_ranges": topology.vlan_ranges(
            second_dvs=second_dvs)},
        "ml2_type_vxlan": {"vni_ranges": "5000:24999"},
        "ml2_vsphere": {
            "vcenter_url": vcenter.url, "username": vcenter.username,
            "password": vcenter.password, "ca_file": vcenter.ca_file,
            "datacenter": topology.DATACENTER,
            "dvs_mappings": ",".join(f"{physnet}:{dvs}" for physnet, dvs in
                                     topology.dvs_mappings(second_dvs).items()),
            "host_mappings": ",".join(f"{host}:{info['cluster']}"
                                      for host, info in compute_hosts.items()),
            "cleanup_interval": "5"},
        "ml2_fabric": {"topology_file": str(topology_file), "mode": mode,
                       "wakeup_listen": wakeup, "wakeup_targets": wakeup},
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    write_ini(ml2_conf, sections)
    (workdir / "state").mkdir(exist_ok=True)
    (workdir / "locks").mkdir(exist_ok=True)
    write_lab_python(workdir, sqlite=db_url.startswith("sqlite"))
    return [neutron_conf, ml2_conf]


LAB_PYTHON = "lab-python"
LAB_DRIVERS = {"dvs_fabric_noop_vlan":
               "networking_dvs_fabric.lab.noop_vlan:NoopVlanMechanismDriver"}


def write_lab_python(workdir: Path, sqlite: bool) -> Path:
    """The lab's own import path, put first on its Neutron processes' PYTHONPATH.

    It holds what only the lab's Neutron may load, so a production Neutron never
    can: the benchmarks' no-I/O driver, as a ``neutron.ml2.mechanism_drivers``
    entry point of a distribution that exists only here; and on SQLite a
    ``sitecustomize`` that installs ``sqlite_immediate`` in every process.
    """
    path = workdir / LAB_PYTHON
    info = path / "dvs_fabric_lab-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dvs-fabric-lab\nVersion: 0.1\n"
        "Summary: networking-dvs-fabric's lab-only drivers (written by the lab)\n")
    (info / "entry_points.txt").write_text(
        "[neutron.ml2.mechanism_drivers]\n"
        + "".join(f"{name} = {target}\n" for name, target in LAB_DRIVERS.items()))
    hook = path / "sitecustomize.py"
    if sqlite:
        hook.write_text(
            '"""Written by the networking-dvs-fabric lab: its Neutron runs on SQLite."""\n'
            "from networking_dvs_fabric.lab import sqlite_immediate\n\n"
            "sqlite_immediate.install()\n")
    else:
        hook.unlink(missing_ok=True)
    return path


def _config_args(config_files: list[Path]) -> list[str]:
    args: list[str] = []
    for path in config_files:
        args += ["--config-file", str(path)]
    return args


def prepare_database(db_url: str, config_files: list[Path], log: Path) -> None:
    """Create Neutron's schema: migrations on MariaDB, models + stamp on SQLite."""
    manage = [str(BIN / "neutron-db-manage"), *_config_args(config_files)]
    if db_url.startswith("sqlite"):
        # Migrations do not run on SQLite; the models' metadata does.
        code = ("import sys, sqlalchemy\n"
                "from neutron.db.migration.models import head\n"
                "import networking_dvs_fabric.db.models  # our tables too\n"
                "engine = sqlalchemy.create_engine(sys.argv[1])\n"
                "head.get_metadata().create_all(engine)\n")
        _run([sys.executable, "-c", code, db_url], log, "create the SQLite schema")
        # The migrations' data too: the rule templates every default security group is
        # made from (2023.2 expand c33da356b165), or the lab's default groups would
        # have no rules at all, unlike any real Neutron's.
        _run([sys.executable, "-m", "networking_dvs_fabric.lab.sg_templates", db_url], log,
             "add the default security group rule templates")
        _run(manage + ["stamp", "heads"], log, "stamp the SQLite schema")
    else:
        _run(manage + ["upgrade", "heads"], log, "migrate the MariaDB schema")


def _run(argv: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise LabError(f"could not {what} (exit {result.returncode}); log {log}:\n{tail}")


def _env(config_files: list[Path]) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["OS_NEUTRON_CONFIG_DIR"] = str(config_files[0].parent)
    env["OS_NEUTRON_CONFIG_FILES"] = ";".join(p.name for p in config_files)
    lab_python = str(config_files[0].parent / LAB_PYTHON)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lab_python, env.get("PYTHONPATH")) if p)
    return env


def api_daemon(workdir: Path, config_files: list[Path], port: int, processes: int = 2) -> Daemon:
    argv = [str(BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}",
            "--module", "neutron.wsgi.api:application", "--home", sys.prefix,
            "--master", "--processes", str(processes), "--enable-threads",
            "--lazy-apps", "--die-on-term", "--need-app", "--thunder-lock",
            "--add-header", "Connection: close", "--buffer-size", "65535"]
    return Daemon("neutron-api", argv, workdir / "logs" / "neutron-api.log",
                  env=_env(config_files))


def periodic_daemon(workdir: Path, config_files: list[Path], suffix: str = "") -> Daemon:
    argv = [str(BIN / "neutron-periodic-workers"), *_config_args(config_files)]
    return Daemon(f"neutron-periodic-workers{suffix}", argv,
                  workdir / "logs" / f"neutron-periodic-workers{suffix}.log",
                  env=_env(config_files))


def rpc_server_daemon(workdir: Path, config_files: list[Path]) -> Daemon:
    """``neutron-rpc-server``: the plugin's RPC endpoints agents call (under uWSGI the
    API serves no RPC), on the lab's message bus."""
    argv = [str(BIN / "neutron-rpc-server"), *_config_args(config_files)]
    return Daemon("neutron-rpc-server", argv, workdir / "logs" / "neutron-rpc-server.log",
                  env=_env(config_files))


#: The queue agents' state reports go to; consumed once the RPC server is up.
REPORTS_QUEUE = "q-reports-plugin"


def rpc_consumers(transport_url: str, queue: str = REPORTS_QUEUE) -> int:
    """How many consumers ``queue`` has on the bus (0: not declared yet)."""
    import kombu
    from amqp import exceptions as amqp_exc

    from networking_dvs_fabric.lab.rabbitmq import amqp_url
    with kombu.Connection(amqp_url(transport_url), connect_timeout=3) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue,
                                                          passive=True).consumer_count)
        except amqp_exc.NotFound:
            return 0


def _placement_address(config_files: list[Path]) -> tuple[str, int]:
    """Where ``write_configs`` told Neutron its placement is."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_files[0])
    endpoint = urllib.parse.urlsplit(parser["placement"]["endpoint"])
    return str(endpoint.hostname), int(endpoint.port or 80)


def placement_daemon(workdir: Path, config_files: list[Path]) -> Daemon:
    """The lab's empty placement (lab/placement.py), where Neutron looks for it."""
    host, port = _placement_address(config_files)
    argv = [sys.executable, "-m", "networking_dvs_fabric.lab.placement", host, str(port)]
    return Daemon("placement", argv, workdir / "logs" / "placement.log")


def _listening(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=1):
        return True


def api_answers(url: str) -> bool:
    request = urllib.request.Request(url + "/v2.0/networks", headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status == 200 and "networks" in json.loads(response.read())


JOURNAL_STARTED = "journal worker started"


def start_neutron(workdir: Path, config_files: list[Path], api_processes: int,
                  timeout: float = 180.0, journal_workers: int = 0,
                  transport_url: str | None = None) -> tuple[list[Daemon], str]:
    """Start placement, the API and the periodic workers; wait until the API answers.
    With a message bus (``transport_url``), the RPC server too, until it consumes.

    Returns the daemons in start order (stop them in reverse) and the API's URL.
    SQLite cannot take writes from several processes at once (Neutron does not
    retry "database is locked"), so the lab runs one API process on SQLite and
    several on MariaDB.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[Daemon] = []
    try:
        placement = placement_daemon(workdir, config_files).start()
        started.append(placement)
        address = _placement_address(config_files)
        wait_until(lambda: _listening(address), timeout, f"the lab's placement at {address}",
                   alive=placement)
        api = api_daemon(workdir, config_files, port, api_processes).start()
        started.append(api)
        wait_until(lambda: api_answers(url), timeout, f"Neutron API at {url}", alive=api,
                   interval=0.5)
        # After the API: both sync the type drivers' allocations at start, and SQLite
        # does not take two writers.
        periodic = periodic_daemon(workdir, config_files).start()
        started.append(periodic)
        if journal_workers:
            # Work recorded before the journal workers run would wait for them: a lab
            # that says it is up must converge at once.
            wait_until(lambda: periodic.log_path.read_text(errors="replace").count(
                JOURNAL_STARTED) >= journal_workers, timeout,
                f"{journal_workers} journal worker(s) in neutron-periodic-workers",
                alive=periodic, interval=0.2)
        if transport_url is not None:
            rpc = rpc_server_daemon(workdir, config_files).start()
            started.append(rpc)
            wait_until(lambda: rpc_consumers(transport_url) > 0, timeout,
                       f"neutron-rpc-server consuming {REPORTS_QUEUE}", alive=rpc,
                       interval=0.5)
    except BaseException:
        for daemon in reversed(started):
            daemon.stop()
        raise
    return started, url
