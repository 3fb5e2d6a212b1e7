"""The lab's vCenter: govmomi's simulator, built once from ``lab/vcsim/main.go``.

``build_vcsim()`` compiles the Go main offline against the Debian packages
golang-go and golang-github-vmware-govmomi-dev and caches the binary;
``VCenterSimulator`` runs it over https with a generated certificate and a
fixed user name and password.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from networking_dvs_fabric.lab.certs import ensure_cert
from networking_dvs_fabric.lab.procs import Daemon, LabError, port_open, wait_until

GOCODE = Path("/usr/share/gocode")
GOVMOMI_SRC = GOCODE / "src/github.com/vmware/govmomi"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"
MAIN_GO = Path(__file__).with_name("vcsim") / "main.go"
# Compiled into govmomi's simulator package by the build's overlay (no file of govmomi
# changes), each for what vCenter does and govmomi 0.24's simulator does not (see each
# file's comment): incremental WaitForUpdatesEx; container views that learn of a new
# object by its ancestors, not by walking the inventory.
PACKAGE_GO = tuple(Path(__file__).with_name("vcsim") / name
                   for name in ("incremental_updates.go", "container_views.go"))
HOST = "127.0.0.1"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "networking-dvs-fabric" / "vcsim"


def _govmomi_version() -> str:
    if not (GOVMOMI_SRC / "simulator").is_dir():
        raise LabError(f"govmomi's simulator source is missing ({GOVMOMI_SRC}/simulator): "
                       f"install the Debian package {GOVMOMI_PACKAGE}")
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", GOVMOMI_PACKAGE],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # Not installed through dpkg: identify the source by its module files.
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            path = GOVMOMI_SRC / name
            digest.update(path.read_bytes() if path.is_file() else b"")
        return "src-" + digest.hexdigest()[:16]


def build_vcsim(cache_dir: Path | None = None) -> Path:
    """The simulator binary, compiled on first use and cached by source and govmomi version."""
    source = MAIN_GO.read_bytes()
    package_sources = {path.name: path.read_bytes() for path in PACKAGE_GO}
    key = hashlib.sha256(b"\0".join([source, *package_sources.values(),
                                     _govmomi_version().encode()])).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    binary = root / key / "vcsim"
    if binary.is_file():
        return binary

    go = shutil.which("go")
    if go is None:
        raise LabError("the Go compiler is missing: install the Debian package golang-go")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first
        if not binary.is_file():
            _go_build(go, source, package_sources, root, binary)
    return binary


def _go_build(go: str, source: bytes, package_sources: dict[str, bytes], root: Path,
              binary: Path) -> None:
    print("building the vCenter simulator (once, ~15 s)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=root) as tmp:
        (Path(tmp) / "main.go").write_bytes(source)
        overlay = {}
        for name, text in package_sources.items():
            (Path(tmp) / name).write_bytes(text)
            overlay[str(GOVMOMI_SRC / "simulator" / f"zz_lab_{name}")] = str(Path(tmp) / name)
        (Path(tmp) / "overlay.json").write_text(json.dumps({"Replace": overlay}))
        env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="",
                   GOPATH=f"{tmp}/gopath{os.pathsep}{GOCODE}")
        if not (os.environ.get("HOME") or os.environ.get("XDG_CACHE_HOME")):
            env.setdefault("GOCACHE", str(root / "go-build"))
        result = subprocess.run(
            [go, "build", "-overlay", "overlay.json", "-o", "vcsim", "main.go"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise LabError(f"building the vCenter simulator failed:\n{result.stdout}"
                           f"{result.stderr}")
        os.replace(Path(tmp) / "vcsim", binary)  # atomic: readers never see a partial file


class VCenterSimulator:
    """One running simulated vCenter on https://127.0.0.1:PORT/sdk."""

    def __init__(self, workdir: Path, username: str = "lab-admin",
                 password: str | None = None, port: int = 0,
                 cert: Path | None = None, key: Path | None = None,
                 session_idle_timeout: float = 0, binary: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.port = port
        self.cert = Path(cert) if cert else None
        self.key = Path(key) if key else None
        self.session_idle_timeout = session_idle_timeout
        self.binary = Path(binary) if binary else None
        self.daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/sdk"

    @property
    def ca_file(self) -> Path | None:
        """The certificate to trust (it is its own CA)."""
        return self.cert

    @property
    def pid(self) -> int | None:
        return self.daemon.pid if self.daemon else None

    @property
    def address_file(self) -> Path:
        return self.workdir / "vcsim.address"

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running()

    def start(self, timeout: float = 60) -> "VCenterSimulator":
        """Build if needed, start the simulator and wait until it accepts connections."""
        if self.running():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.binary is None or not self.binary.is_file():
            self.binary = build_vcsim()
        if self.cert is None or self.key is None:
            self.cert, self.key = ensure_cert(self.workdir)
        self.address_file.unlink(missing_ok=True)
        argv = [str(self.binary),
                "-listen", f"{HOST}:{self.port}",
                "-username", self.username, "-password", self.password,
                "-cert", str(self.cert), "-key", str(self.key),
                "-session-idle-timeout", f"{round(self.session_idle_timeout * 1000)}ms",
                "-address-file", str(self.address_file)]
        self.daemon = Daemon("vcsim", argv, self.workdir / "vcsim.log").start()
        wait_until(lambda: self.address_file.read_text().strip() != "", timeout,
                   "vCenter simulator address file", alive=self.daemon)
        port = urlsplit(self.address_file.read_text().strip()).port
        if port is None:
            self.stop()
            raise LabError(f"vCenter simulator wrote an address without a port "
                           f"to {self.address_file}")
        self.port = port
        wait_until(lambda: port_open(HOST, self.port), timeout,
                   f"vCenter simulator on port {self.port}", alive=self.daemon)
        return self

    def stop(self) -> None:
        """Stop the simulator by its pid (SIGTERM, then SIGKILL)."""
        if self.daemon is not None:
            self.daemon.stop()

    def restart_with(self, *, username: str | None = None, password: str | None = None,
                     cert: Path | None = None, key: Path | None = None,
                     session_idle_timeout: float | None = None,
                     timeout: float = 60) -> "VCenterSimulator":
        """Restart on the same port with changed credentials, certificate or idle timeout."""
        if (cert is None) != (key is None):
            raise ValueError("cert and key must be given together")
        self.stop()
        if username is not None:
            self.username = username
        if password is not None:
            self.password = password
        if cert is not None and key is not None:
            self.cert, self.key = Path(cert), Path(key)
        if session_idle_timeout is not None:
            self.session_idle_timeout = session_idle_timeout
        return self.start(timeout)

    def __enter__(self) -> "VCenterSimulator":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir), "username": self.username,
            "password": self.password, "port": self.port, "url": self.url,
            "cert": str(self.cert) if self.cert else None,
            "key": str(self.key) if self.key else None,
            "session_idle_timeout": self.session_idle_timeout,
            "binary": str(self.binary) if self.binary else None,
            "daemon": self.daemon.to_json() if self.daemon else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VCenterSimulator":
        sim = cls(Path(data["workdir"]), username=data["username"],
                  password=data["password"], port=data["port"],
                  cert=Path(data["cert"]) if data.get("cert") else None,
                  key=Path(data["key"]) if data.get("key") else None,
                  session_idle_timeout=data.get("session_idle_timeout", 0),
                  binary=Path(data["binary"]) if data.get("binary") else None)
        if data.get("daemon"):
            sim.daemon = Daemon.from_json(data["daemon"])
        return sim
