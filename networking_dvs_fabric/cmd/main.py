"""``dvs-fabric``: the project's command line (lab, demo, journal, ports, bench)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.client import NeutronError
from networking_dvs_fabric.lab.lab import DATABASES, DEFAULT_DRIVERS, MESSAGE_BUSES, MODES, Lab
from networking_dvs_fabric.lab.procs import LabError


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(Path(args.lab_dir) if args.lab_dir else None)


def cmd_lab_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    extra = {}
    if args.vlan_range:
        extra["ml2_type_vlan"] = {"network_vlan_ranges": lab_topology.vlan_ranges(
            *args.vlan_range, second_dvs=args.second_dvs)}
    if args.agents and args.dataplane is False:
        raise LabError("--agents needs the dataplane: drop --no-dataplane")
    lab.up(args.ml2_mechanism_drivers, args.mode, args.db, dataplane=args.dataplane,
           extra_config=extra, share=Path(args.share) if args.share else None,
           bus=args.message_bus, agents=args.agents, second_dvs=args.second_dvs)
    print(lab.how_to_reach())
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    stopped = _lab(args).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    lab = _lab(args)
    status = lab.status()
    running = lab.running()
    down = sorted(name for name, alive in running.items() if not alive)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(lab.how_to_reach())
        for name, alive in sorted(running.items()):
            print(f"{name:26s} {'running' if alive else 'NOT RUNNING'}")
    if down:
        print(f"dvs-fabric: lab processes not running: {', '.join(down)}; "
              "run 'dvs-fabric lab up' to restart the lab", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.lab import demo
    return demo.run(_lab(args), as_json=getattr(args, "json", False),
                    mode=getattr(args, "mode", "pre_provision"),
                    dataplane=getattr(args, "dataplane", None))


def cmd_journal(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import journal_cmd, neutron_db
    files = neutron_db.config_files(args.config_file, _lab(args).state())
    found = journal_cmd.rows(files, args.state or None, args.limit)
    print(journal_cmd.to_json(found) if args.json else journal_cmd.format_rows(found))
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import neutron_db, ports_cmd
    files = neutron_db.config_files(args.config_file, _lab(args).state())
    found = ports_cmd.rows(files, args.network)
    print(ports_cmd.to_json(found) if args.json else ports_cmd.format_rows(found))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import audit_cmd, neutron_db
    files = neutron_db.config_files(args.config_file, _lab(args).state())
    report = audit_cmd.run_audit(files)
    print(audit_cmd.to_json(report) if args.json else audit_cmd.format_report(report))
    return report.exit_code


def cmd_sync(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import audit_cmd, neutron_db
    files = neutron_db.config_files(args.config_file, _lab(args).state())
    before, done, after = audit_cmd.run_sync(files, args.dry_run)
    if args.dry_run or done is None:
        print(audit_cmd.format_report(before))
        if args.dry_run and before.drifts:
            print("sync --dry-run: nothing changed; run without --dry-run to repair")
        return before.exit_code
    print(f"sync: repaired {done.port_groups} port groups and {done.leaf_networks} "
          f"network(s) on leaves; {len(done.failures)} failure(s)")
    for failure in done.failures:
        print(f"  {failure}")
    print(audit_cmd.format_report(after))
    return after.exit_code


def cmd_topology(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import neutron_db, topology_cmd
    files = neutron_db.config_files(args.config_file, _lab(args).state())
    return topology_cmd.run(files, args.json, args.svg)


def cmd_bench_bind(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench
    result = bench.bench_bind(Path(args.lab_dir) if args.lab_dir else None,
                              networks=args.networks, ports=args.ports, pin=not args.no_pin)
    print(json.dumps(result, indent=2) if args.json else bench.format_text(result))
    return 0 if result.get("targets_met", True) else 3


def cmd_bench_fabric(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench_fabric
    result = bench_fabric.bench_fabric(networks=args.networks, bulk=args.bulk,
                                       lab_dir=Path(args.lab_dir) if args.lab_dir else None,
                                       pin=not args.no_pin)
    print(json.dumps(result, indent=2) if args.json else bench_fabric.format_text(result))
    return 0 if result.get("targets_met", True) else 3


def cmd_bench_vmotion(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench_vmotion
    result = bench_vmotion.bench_vmotion(
        moves=args.moves, lab_dir=Path(args.lab_dir) if args.lab_dir else None)
    print(json.dumps(result, indent=2) if args.json else bench_vmotion.format_text(result))
    return 0 if result.get("targets_met", True) else 3


def cmd_bench_dhcp(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench_dhcp
    result = bench_dhcp.bench_dhcp(networks=args.networks, keep=args.keep,
                                   lab_dir=Path(args.lab_dir) if args.lab_dir else None)
    print(json.dumps(result, indent=2) if args.json else bench_dhcp.format_text(result))
    met = all(result[kind].get("target_met") for kind in ("vsphere", "kvm"))
    return 0 if met else 3


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"--sizes wants positive whole numbers separated by commas, not {value!r}")
    return sizes


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench_scale
    if args.vms < max(args.sizes):
        raise LabError(f"--vms {args.vms} is below the largest size {max(args.sizes)}: "
                       "every network has a VM, so --vms must be at least that")
    result = bench_scale.bench_scale(
        sizes=args.sizes, vms=args.vms, samples=args.samples, moves=args.moves,
        lab_dir=Path(args.lab_dir) if args.lab_dir else None, pin=not args.no_pin,
        second_dvs=args.second_dvs)
    print(json.dumps(result, indent=2) if args.json else bench_scale.format_text(result))
    if args.json:
        print(bench_scale.format_text(result), file=sys.stderr)
    return 0 if result["targets_met"] else 3


def cmd_bench_secgroups(args: argparse.Namespace) -> int:
    from networking_dvs_fabric.cmd import bench_secgroups
    result = bench_secgroups.bench_secgroups(
        groups=args.groups, ports=args.ports, members=args.members, changes=args.changes,
        pairs=args.pairs, lab_dir=Path(args.lab_dir) if args.lab_dir else None,
        pin=not args.no_pin)
    print(json.dumps(result, indent=2) if args.json else bench_secgroups.format_text(result))
    return 0 if result.get("targets_met", True) else 3


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _vlan_range(value: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give LO:HI, e.g. 100:199") from None
    if not 1 <= low <= high <= 4094:
        raise argparse.ArgumentTypeError(f"{value!r}: need 1 <= LO <= HI <= 4094")
    return low, high


def _config_file_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--config-file", action="append", default=[],
                        help=f"{what} (repeatable; default: the running lab's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvs-fabric", description=__doc__)
    parser.add_argument("--lab-dir", help="where the lab keeps its state, configs and logs "
                        "(default: $DVS_FABRIC_LAB_DIR or ~/.local/state/networking-dvs-fabric/lab)")
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="the test bed: real Neutron, vCenter simulator, leaves")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="start (or restart) the lab")
    up.add_argument("--ml2-mechanism-drivers", default=DEFAULT_DRIVERS,
                    help=f"comma-separated ML2 mechanism drivers (default: {DEFAULT_DRIVERS})")
    up.add_argument("--mode", choices=MODES, default="pre_provision",
                    help="leaf VLAN resolution: on every host of a cluster at once "
                         "(pre_provision, default) or only where a VM runs (on_demand)")
    up.add_argument("--db", choices=DATABASES, default="sqlite",
                    help="Neutron's database: an SQLite file (default) or MariaDB (a running "
                         "server, else a private one started from Debian's package)")
    up.add_argument("--dataplane", action=argparse.BooleanOptionalAction, default=None,
                    help="real packets: software VTEP leaves (ovs-vtep), ESXi host bridges "
                         "and a namespace per VM (default: on where network namespaces "
                         "work; --dataplane makes it required)")
    up.add_argument("--share", metavar="LAB_DIR",
                    help="a second deployment: use the vCenter simulator and leaves of the "
                         "lab running in LAB_DIR (own database and Neutron; give the two "
                         "labs disjoint --vlan-range)")
    up.add_argument("--message-bus", choices=MESSAGE_BUSES, default="fake",
                    help="Neutron's message bus: oslo.messaging's in-process fake (default) "
                         "or a private RabbitMQ node on loopback (Debian's rabbitmq-server), "
                         "which Neutron's agents need")
    up.add_argument("--agents", action="store_true",
                    help="a small real cloud: a network node net-1 (Neutron's DHCP and L3 "
                         "agents) and a KVM compute kvm-1, each with its own Open vSwitch "
                         "and OVS agent, cabled to the leaves; implies --dataplane and "
                         "--message-bus rabbitmq, adds the openvswitch driver")
    up.add_argument("--second-dvs", action="store_true",
                    help="beyond one DVS: cluster DC0_C1 moves from DVS0 to a second DVS, "
                         f"{lab_topology.SECOND_DVS_NAME}, on physical network "
                         f"{lab_topology.SECOND_PHYSICAL_NETWORK} with the same VLANs")
    up.add_argument("--vlan-range", type=_vlan_range, metavar="LO:HI",
                    help="the VLANs this lab's Neutron hands out (default: "
                         f"{lab_topology.VLAN_RANGE[0]}:{lab_topology.VLAN_RANGE[1]})")
    up.set_defaults(func=cmd_lab_up)
    lab_demo = lab_sub.add_parser(
        "demo", help="the three workflows (create network, boot VMs, vMotion) on a fresh "
                     "lab, with pings through the fabric; lab down at the end")
    lab_demo.add_argument("--json", action="store_true",
                          help="last line: the summary as JSON")
    lab_demo.add_argument("--mode", choices=MODES, default="pre_provision",
                          help="leaf VLAN resolution of the demo's lab")
    lab_demo.add_argument("--dataplane", action=argparse.BooleanOptionalAction,
                          default=None, help="as for 'lab up'")
    lab_demo.set_defaults(func=cmd_demo)
    down = lab_sub.add_parser("down", help="stop every process the lab started")
    down.set_defaults(func=cmd_lab_down)
    status = lab_sub.add_parser("status", help="how to reach the running lab")
    status.add_argument("--json", action="store_true",
                        help="print the machine-readable description other tools read")
    status.set_defaults(func=cmd_lab_status)

    demo = sub.add_parser("demo", help="the same as 'lab demo'")
    demo.set_defaults(func=cmd_demo)

    journal = sub.add_parser("journal", help="the journal: pending, failed and recent work")
    _config_file_arg(journal, "Neutron config file naming the database")
    journal.add_argument("--state", action="append", choices=("pending", "processing",
                                                              "failed", "completed"),
                         help="only rows in this state (repeatable)")
    journal.add_argument("--limit", type=_positive, default=100, help="newest N rows")
    journal.add_argument("--json", action="store_true", help="print the rows as JSON")
    journal.set_defaults(func=cmd_journal)

    ports = sub.add_parser("ports", help="where each port's VM runs (the vCenter watcher)")
    ports.add_argument("--network", help="only this network's ports (its UUID)")
    _config_file_arg(ports, "Neutron config file naming the database")
    ports.add_argument("--json", action="store_true", help="print the rows as JSON")
    ports.set_defaults(func=cmd_ports)

    for name, func, text in (("audit", cmd_audit, "compare Neutron with vCenter and the "
                              "leaves (read-only); exit 0 clean, 1 drift, 2 unreadable"),
                             ("sync", cmd_sync, "repair what audit finds (ours only)")):
        cmd = sub.add_parser(name, help=text)
        _config_file_arg(cmd, "Neutron config files: neutron.conf and ml2_conf.ini")
        if name == "audit":
            cmd.add_argument("--json", action="store_true", help="print the drift as JSON")
        else:
            cmd.add_argument("--dry-run", action="store_true",
                             help="show what would be repaired, change nothing")
        cmd.set_defaults(func=func)

    topo = sub.add_parser("topology", help="the overall view, read live: leaves and ports, "
                          "hosts, VMs, VLAN->VNI per network (read-only); exit 2 unreadable")
    _config_file_arg(topo, "Neutron config files: neutron.conf and ml2_conf.ini")
    topo.add_argument("--json", action="store_true", help="print the view as JSON")
    topo.add_argument("--svg", metavar="FILE", help="draw the view as an SVG picture in FILE")
    topo.set_defaults(func=cmd_topology)

    bench = sub.add_parser("bench", help="benchmarks (JSON out)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bind = bench_sub.add_parser(
        "bind", help="port create+bind latency vs a no-I/O driver; runs its own lab in a "
                     "temporary directory (or --lab-dir, which must not hold a running lab)")
    bind.add_argument("--json", action="store_true", help="print the result as JSON")
    bind.add_argument("--networks", type=int, default=60,
                      help="networks per driver (first-port samples)")
    bind.add_argument("--ports", type=int, default=2, help="later ports per network")
    bind.add_argument("--no-pin", action="store_true", help="do not give Neutron's API a CPU of its own (see docs/benchmarks)")
    bind.set_defaults(func=cmd_bench_bind)
    fabric = bench_sub.add_parser(
        "fabric", help="fabric_hwvtep: API latency vs a baseline Neutron, convergence to "
                       "the leaves, bulk batching; runs two labs of its own on MariaDB")
    fabric.add_argument("--json", action="store_true", help="print the result as JSON")
    fabric.add_argument("--networks", type=_positive, default=1000,
                        help="networks measured one by one (latency and convergence)")
    fabric.add_argument("--no-pin", action="store_true", help="do not give Neutron's API a CPU of its own (see docs/benchmarks)")
    fabric.add_argument("--bulk", type=int, default=1000,
                        help="networks created while the worker is stopped (0: skip)")
    fabric.set_defaults(func=cmd_bench_fabric)
    vmotion = bench_sub.add_parser(
        "vmotion", help="how fast the leaves follow vMotions, in both modes; runs labs of "
                        "its own")
    vmotion.add_argument("--json", action="store_true", help="print the result as JSON")
    vmotion.add_argument("--moves", type=_positive, default=100,
                         help="relocations per mode")
    vmotion.set_defaults(func=cmd_bench_vmotion)
    dhcp = bench_sub.add_parser(
        "dhcp", help="from port create to the VM's DHCP lease (vSphere VM, KVM VM, and a "
                     "baseline next to dnsmasq); runs its own lab with Neutron's agents")
    dhcp.add_argument("--json", action="store_true", help="print the result as JSON")
    dhcp.add_argument("--networks", type=_positive, default=20,
                      help="networks, each with one guest of each kind")
    dhcp.add_argument("--keep", action="store_true",
                      help="keep every network and guest to the end (default: each "
                           "network is deleted after it is measured)")
    dhcp.set_defaults(func=cmd_bench_dhcp)
    secgroups = bench_sub.add_parser(
        "secgroups", help="security groups: rule and member changes until vCenter's filters "
                          "hold them, vCenter tasks per change, port create cost; runs its "
                          "own lab on MariaDB")
    secgroups.add_argument("--json", action="store_true", help="print the result as JSON")
    secgroups.add_argument("--groups", type=_positive, default=10, help="security groups")
    secgroups.add_argument("--ports", type=_positive, default=100,
                           help="ports spread over the groups (at least --groups)")
    secgroups.add_argument("--members", type=_positive, default=200,
                           help="members of the remote group new members join")
    secgroups.add_argument("--changes", type=_positive, default=30,
                           help="rule adds, and member joins, measured")
    secgroups.add_argument("--pairs", type=_positive, default=100,
                           help="port creates of each kind (with / without groups)")
    secgroups.add_argument("--no-pin", action="store_true", help="do not give Neutron's API a CPU of its own (see docs/benchmarks)")
    secgroups.set_defaults(func=cmd_bench_secgroups)
    scale = bench_sub.add_parser(
        "scale", help="every cost as the cloud grows (networks with a bound port and a VM "
                      "each, then more VMs); runs its own lab on MariaDB")
    scale.add_argument("--json", action="store_true",
                       help="print the result as JSON (the table goes to stderr)")
    scale.add_argument("--sizes", type=_sizes, default=[250, 1000, 4000],
                       help="network counts to measure at, comma-separated "
                            "(default 250,1000,4000)")
    scale.add_argument("--vms", type=_positive, default=5000,
                       help="VMs at the end, for the watcher's figures (default 5000)")
    scale.add_argument("--samples", type=_positive, default=20,
                       help="networks made one by one at each size (default 20)")
    scale.add_argument("--moves", type=_positive, default=20,
                       help="vMotions timed at the end (default 20)")
    scale.add_argument("--second-dvs", action="store_true",
                       help="cluster DC0_C1 on a second DVS with its own VLAN pool (past "
                            "4,094 networks; see lab up --second-dvs)")
    scale.add_argument("--no-pin", action="store_true",
                       help="do not give Neutron's API a CPU of its own (see docs/benchmarks)")
    scale.set_defaults(func=cmd_bench_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LabError, NeutronError) as exc:
        print(f"dvs-fabric: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
