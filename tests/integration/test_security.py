"""Secrets stay out of logs and command output; OVSDB over SSL trusts only its CA.

1. A whole lab cycle run as an operator runs it (``dvs-fabric lab up --db mariadb``,
   binds, vCenter restarted with another password so logins fail and are logged,
   back, ``lab status``, ``audit``, ``journal``, ``ports``, ``lab down``); then every
   log file of the lab and every captured command output is searched for the vCenter
   passwords and the MariaDB password.  Only ``lab status --json`` is exempt: it is
   documented to print the vCenter password for tools (README, "The lab").
2. A real ``ovsdb-server`` serving the hardware_vtep database only over SSL
   (``pssl:``), driven by the project's ``HwvtepBackend``: with the CA that signed the
   server's certificate the backend converges; with another CA it raises
   ``LeafUnreachable`` and nothing is written.  python-ovs keeps one set of SSL files
   per process, so each client runs in its own subprocess.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from networking_dvs_fabric.lab import leaves as lab_leaves
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient, NeutronError
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.procs import Daemon, free_port, port_open

HOST_C0 = topology.compute_host("DC0_C0")


# -- 1. no password in any log or command output -------------------------------------
def _cli(lab_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "networking_dvs_fabric.cmd.main",
                           "--lab-dir", str(lab_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def _bind(client: NeutronClient, name: str) -> dict:
    net = client.create_network(name)
    return client.create_port(net["id"], host=HOST_C0)


def _log_files(lab_dir: Path) -> list[Path]:
    """Every file under logs/ and every *.log anywhere in the lab directory."""
    found = {p for p in (lab_dir / "logs").rglob("*") if p.is_file()}
    found |= {p for p in lab_dir.rglob("*.log") if p.is_file()}
    return sorted(found)


def _secret_forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


def test_no_password_in_logs_or_command_output(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("lab-security")
    lab = Lab(lab_dir)
    outputs: dict[str, str] = {}           # command -> stdout + stderr
    scanned: list[Path] = []
    try:
        up = _cli(lab_dir, "lab", "up", "--db", "mariadb")
        outputs["lab up --db mariadb"] = up.stdout + up.stderr
        assert up.returncode == 0, up.stderr[-3000:]
        status = lab.status()
        state = lab.state()
        vc_password = status["vcenter"]["password"]
        db_password = state["services"]["mariadb"]["password"]
        wrong_password = "Wr0ng-" + secrets.token_urlsafe(15)
        client = NeutronClient(status["neutron"]["url"], timeout=180)

        for i in range(2):
            assert _bind(client, f"sec-{i}")["binding:vif_type"] == "dvs"

        # vCenter now wants another password: the configured one is refused.
        lab.restart_vcenter(password=wrong_password)
        refused = _bind(client, "sec-refused")
        assert refused["binding:vif_type"] == "binding_failed", refused
        api_log = lab_dir / "logs" / "neutron-api.log"
        login_lines = [line for line in api_log.read_text(errors="replace").splitlines()
                       if "login" in line.lower() or "password" in line.lower()]
        assert login_lines, "the refused login was not logged"
        print("logged:", login_lines[-1][:300])

        # Back to the configured password; binds work again (after the hold-off).
        lab.restart_vcenter(password=vc_password)
        deadline = time.monotonic() + 90
        while True:
            try:
                port = _bind(client, "sec-back")
            except NeutronError:
                port = {"binding:vif_type": "error"}
            if port["binding:vif_type"] == "dvs":
                break
            assert time.monotonic() < deadline, port
            time.sleep(3)

        for args in (("lab", "status"), ("audit",), ("journal",), ("ports",)):
            out = _cli(lab_dir, *args)
            outputs[" ".join(args)] = out.stdout + out.stderr
            # audit may report drift (the vCenter restart emptied its inventory): 0 or 1.
            assert out.returncode in (0, 1), (args, out.stdout[-2000:], out.stderr[-2000:])
        as_json = _cli(lab_dir, "lab", "status", "--json")
        # Documented exception, not scanned: it prints the vCenter password for tools.
        assert vc_password in as_json.stdout
        down = _cli(lab_dir, "lab", "down")
        outputs["lab down"] = down.stdout + down.stderr
        assert down.returncode == 0, down.stderr

        scanned = _log_files(lab_dir)
        assert any(p.name == "neutron-api.log" for p in scanned)
        assert any(p.name.startswith("neutron-periodic-workers") for p in scanned)
    finally:
        lab.down()

    secrets_by_name = {"vCenter password": vc_password,
                       "vCenter password set on the simulator (refused)": wrong_password,
                       "MariaDB password": db_password}
    leaks = []
    for path in scanned:
        text = path.read_text(errors="replace")
        for what, secret in secrets_by_name.items():
            for form in _secret_forms(secret):
                at = text.find(form)
                if at >= 0:
                    context = text[max(0, at - 120):at].splitlines()[-1:] or [""]
                    leaks.append(f"{what} in {path.relative_to(lab_dir)}: "
                                 f"...{context[0][-120:]}<SECRET>")
    for command, text in outputs.items():
        for what, secret in secrets_by_name.items():
            if any(form in text for form in _secret_forms(secret)):
                leaks.append(f"{what} in the output of 'dvs-fabric {command}'")
    print(f"scanned {len(scanned)} log files and {len(outputs)} command outputs: "
          f"{[str(p.relative_to(lab_dir)) for p in scanned]}")
    shutil.rmtree(lab_dir, ignore_errors=True)
    assert leaks == []


# -- 2. OVSDB over SSL -----------------------------------------------------------------
def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key) -> str:
    from cryptography.hazmat.primitives import serialization
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def _cert(subject: str, key, issuer_name: str, issuer_key, ca: bool, path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _pki(directory: Path) -> dict[str, str]:
    """CA 1 signs the server's and the client's certificates; CA 2 signs nothing of ours."""
    ca1_key, ca2_key = _key(), _key()
    out = {"ca1": _cert("lab-ca-1", ca1_key, "lab-ca-1", ca1_key, True, directory / "ca1.pem"),
           "ca2": _cert("lab-ca-2", ca2_key, "lab-ca-2", ca2_key, True, directory / "ca2.pem")}
    for who in ("server", "client"):
        key = _key()
        out[f"{who}_key"] = _write_key(directory / f"{who}-key.pem", key)
        out[f"{who}_cert"] = _cert(f"leaf-{who}", key, "lab-ca-1", ca1_key, False,
                                   directory / f"{who}-cert.pem")
    return out


CLIENT = r"""
import json, sys
from networking_dvs_fabric.fabric.api import LeafSpec, LeafUnreachable, NetworkOnLeaf, SslFiles
from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
endpoint, key, cert, ca, network = sys.argv[1:6]
backend = HwvtepBackend([LeafSpec("leaf-ssl", endpoint, "192.0.2.9", SslFiles(key, cert, ca))],
                        connect_timeout=5, txn_timeout=10)
try:
    result = backend.converge("leaf-ssl", {network: NetworkOnLeaf(
        network, 5099, frozenset({("eth1", 199)}))})
    print(json.dumps({"ok": True, "transactions": result.transactions,
                      "read": sorted(backend.read("leaf-ssl"))}))
except LeafUnreachable as exc:
    print(json.dumps({"ok": False, "error": "LeafUnreachable", "message": str(exc)}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
finally:
    backend.close()
"""


def _client(endpoint: str, key: str, cert: str, ca: str, network: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CLIENT, endpoint, key, cert, ca, network],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not shutil.which("vtep-ctl") or not lab_leaves.VTEP_SCHEMA.exists(),
                    reason="needs ovsdb-server, vtep-ctl and vtep.ovsschema "
                           "(apt-get install openvswitch-switch openvswitch-vtep)")
def test_ovsdb_over_ssl_trusts_only_its_ca(tmp_path):
    pki = _pki(tmp_path)
    # Build the leaf's database (switch, port, Global) the lab's way, then serve the same
    # file over SSL; a plain TCP remote on loopback is kept only to read back.
    leaf = lab_leaves.LeafSwitch("leaf-ssl", "192.0.2.9", tmp_path / "leaf", ["eth1"])
    leaf.start()
    leaf.stop()
    ssl_port, tcp_port = free_port(), free_port()
    server = Daemon(name="ovsdb-server-ssl", log_path=tmp_path / "ssl-server.log",
                    cwd=tmp_path, argv=[
                        shutil.which("ovsdb-server") or "/usr/sbin/ovsdb-server",
                        f"--remote=pssl:{ssl_port}:127.0.0.1",
                        f"--remote=ptcp:{tcp_port}:127.0.0.1",
                        f"--private-key={pki['server_key']}",
                        f"--certificate={pki['server_cert']}",
                        f"--ca-cert={pki['ca1']}",
                        f"--unixctl={tmp_path / 'ssl.ctl'}", "--no-chdir", "-vfile:off",
                        str(leaf.db_path)]).start()
    reader = lab_leaves.LeafSwitch("leaf-ssl", "192.0.2.9", tmp_path / "leaf", ["eth1"],
                                   port=tcp_port)
    endpoint = f"ssl:127.0.0.1:{ssl_port}"
    try:
        deadline = time.monotonic() + 15
        while not (port_open("127.0.0.1", ssl_port) and port_open("127.0.0.1", tcp_port)):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)

        def contents() -> tuple[str, str, str]:
            return (reader.vtep_ctl("list-ls"),
                    reader.vtep_ctl("list-bindings", "leaf-ssl", "eth1"),
                    reader.vtep_ctl("--columns=_uuid", "list", "Physical_Locator"))

        # Untrusted CA first: the backend must refuse the server and write nothing.
        before = contents()
        started = time.monotonic()
        refused = _client(endpoint, pki["client_key"], pki["client_cert"], pki["ca2"],
                          "n-untrusted")
        refused_after = time.monotonic() - started
        print(f"untrusted CA: {refused} after {refused_after:.1f} s")
        assert refused["ok"] is False and refused["error"] == "LeafUnreachable", refused
        assert "leaf-ssl" in refused["message"]
        # The operator is told why, naming the CA file in use.
        assert "certificate did not verify" in refused["message"], refused
        assert pki["ca2"] in refused["message"], refused
        # The server saw the client abort the handshake because of the CA.
        assert "unknown ca" in (tmp_path / "ssl-server.log").read_text(errors="replace")
        assert contents() == before
        assert "dvsf-n-untrusted" not in reader.vtep_ctl("list-ls")

        # Trusted CA: converged over SSL, read back over the plain TCP remote.
        ok = _client(endpoint, pki["client_key"], pki["client_cert"], pki["ca1"],
                     "n-trusted")
        print(f"trusted CA: {ok}")
        assert ok["ok"] is True and ok["transactions"] >= 1, ok
        assert ok["read"] == ["n-trusted"]
        assert "dvsf-n-trusted" in reader.vtep_ctl("list-ls").split()
        vlan, ls = reader.vtep_ctl("list-bindings", "leaf-ssl", "eth1").split()
        assert (int(vlan), ls) == (199, "dvsf-n-trusted")
        assert reader.vtep_ctl("get", "Logical_Switch", "dvsf-n-trusted",
                               "tunnel_key").strip() == "5099"
    finally:
        server.stop()
