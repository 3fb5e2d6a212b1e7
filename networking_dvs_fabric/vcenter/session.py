"""One logged-in vCenter session: TLS, timeouts, re-login, retries, tasks, bulk reads.

Every call into vCenter goes through ``VCenterSession.invoke``, which
 - logs in lazily and again when vCenter says the session is gone,
 - retries temporary faults (refused, reset, timed out) with backoff, a bounded
   number of times,
 - turns every vCenter fault (``vmodl.MethodFault``, from a call or as a task's
   error) into the project's own errors at once, temporary or permanent, with a
   message naming the call, the fault and vCenter's text (``faults.to_error``;
   wrong password, certificate, object not found keep their own types).  Those
   faults are not retried here - a call may not be safe to repeat as it is -
   but by whoever decides on ``temporary`` (journal worker, sweep, ML2's bind).
"""
from __future__ import annotations

import dataclasses
import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Sequence, TypeVar

from pyVim import connect as pyvim_connect
from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import errors, faults

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class VCenterConfig:
    url: str
    username: str
    password: str = dataclasses.field(repr=False)
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    retries: int = 3
    task_timeout: float = 120.0
    backoff: float = 0.5

    @property
    def host_port_path(self) -> tuple[str, int, str]:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise errors.VCenterError(
                f"vcenter_url {self.url!r} is not an https:// URL with a host")
        return parsed.hostname, parsed.port or 443, parsed.path or "/sdk"


class _BoundedSSLContext(ssl.SSLContext):
    """An SSL context that gives sockets without a timeout the request timeout.

    SmartConnect's API version discovery opens an HTTPS connection of its own with
    no timeout at all: a vCenter that accepts TCP but never answers would hang the
    login - and the Neutron worker binding a port - for good.
    """

    request_timeout: float | None = None

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[override]
        if self.request_timeout is not None and sock.gettimeout() is None:
            sock.settimeout(self.request_timeout)
        return super().wrap_socket(sock, *args, **kwargs)


def _ssl_context(config: VCenterConfig) -> ssl.SSLContext:
    ctx = _BoundedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.request_timeout = config.request_timeout
    if config.insecure:
        LOG.warning("vCenter %s: certificate verification is OFF (insecure = true); "
                    "anyone on the path can read the vCenter password", config.url)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        if config.ca_file:
            ctx.load_verify_locations(cafile=config.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise errors.VCenterCertificateError(
            f"ca_file {config.ca_file!r} cannot be read as PEM certificates: {exc}") from exc
    return ctx


def _is_cert_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        if isinstance(cur, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


_TEMPORARY = (OSError, http.client.HTTPException, socket.timeout)


class _ServiceInstance:
    """The logged-in ServiceInstance with its ServiceContent read once per login.

    pyVmomi fetches ``si.content`` from vCenter on every access; the content (the
    managers' references) does not change during a session, and every call through
    ``invoke`` starts from it, so this saves a round trip per call.  Every other
    attribute is the real ServiceInstance's.
    """

    def __init__(self, si: Any) -> None:
        self._real = si
        self.content = si.RetrieveContent()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Login:
    """One vCenter login (a session cookie and its ServiceInstance), shared by a
    :class:`VCenterSession` and its channels."""

    def __init__(self, config: VCenterConfig) -> None:
        self.config = config
        self.si: Any = None
        self.lock = threading.Lock()
        # Counts successful logins: a new one means the old session was lost (vCenter
        # restarted, or the session expired), so what we made there may be gone too.
        self.count = 0
        # What was learnt of this vCenter's behaviour (``VCenterSession.traits``).
        self.traits: dict[str, bool] = {}

    def current(self) -> Any:
        with self.lock:
            if self.si is None:
                self.si = self._login()
            return self.si

    def drop(self, si: Any) -> None:
        """Forget ``si`` (the next call logs in again) unless it was replaced already:
        channels that all saw the same login fail log in once, not once each."""
        with self.lock:
            if self.si is si:
                self.si = None

    def _login(self) -> Any:
        host, port, path = self.config.host_port_path
        # Bounded connect: pyVmomi has one timeout for everything, so probe first.
        try:
            socket.create_connection((host, port), timeout=self.config.connect_timeout).close()
        except OSError as exc:
            raise errors.VCenterUnreachable(
                f"vCenter {self.config.url} unreachable: {exc}") from exc
        try:
            si = pyvim_connect.SmartConnect(
                protocol="https", host=host, port=port, path=path,
                user=self.config.username, pwd=self.config.password,
                sslContext=_ssl_context(self.config),
                httpConnectionTimeout=self.config.request_timeout)
        except vim.fault.InvalidLogin as exc:
            raise errors.VCenterAuthError(
                f"vCenter {self.config.url} refused the login of user "
                f"{self.config.username!r}: wrong user name or password") from exc
        except errors.VCenterError:
            raise
        except vmodl.MethodFault as exc:
            raise faults.to_error(exc, f"log in to vCenter {self.config.url} as "
                                       f"{self.config.username!r}") from exc
        except Exception as exc:  # noqa: BLE001 - classified below
            if _is_cert_error(exc):
                raise errors.VCenterCertificateError(
                    f"vCenter {self.config.url}: TLS certificate does not verify against "
                    f"ca_file {self.config.ca_file or '(system trust store)'}: {exc}"
                ) from exc
            if isinstance(exc, _TEMPORARY):
                raise errors.VCenterUnreachable(
                    f"vCenter {self.config.url} unreachable: {exc}") from exc
            raise errors.VCenterError(f"vCenter {self.config.url} login failed: {exc}") from exc
        LOG.info("Logged in to vCenter %(url)s as %(user)s",
                 {"url": self.config.url, "user": self.config.username})
        self.count += 1
        return _ServiceInstance(si)

    def logout(self) -> None:
        with self.lock:
            si, self.si = self.si, None
        if si is not None:
            try:
                si.content.sessionManager.Logout()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass


class VCenterSession:
    """A vCenter login that survives expiry and flaky networks, for one thread at a time.

    :meth:`channel` gives another thread (a long poll, a watch) its own handle on
    the same login: calls on different channels run side by side over pyVmomi's
    connection pool, and the process holds one vCenter session however many
    threads use it.  Closing a channel leaves the login alone; closing the session
    that made it logs out.
    """

    def __init__(self, config: VCenterConfig, _login: _Login | None = None) -> None:
        self.config = config
        self._shared = _login or _Login(config)
        self._owner = _login is None
        self._lock = threading.RLock()

    def channel(self) -> "VCenterSession":
        """Another handle on this session's login, for another thread."""
        return VCenterSession(self.config, self._shared)

    @property
    def logins(self) -> int:
        """Successful logins so far (shared with the channels)."""
        return self._shared.count

    @property
    def traits(self) -> dict[str, bool]:
        """What was learnt of this vCenter's behaviour (it lacks a method, fills a
        property...), shared with the channels and kept across re-logins."""
        return self._shared.traits

    @property
    def si(self) -> Any:
        return self._shared.current()

    @property
    def content(self) -> Any:
        return self.si.content

    def session_key(self) -> str | None:
        """The key of the current vCenter session (tests use it to expire it)."""
        si = self._shared.si
        if si is None:
            return None
        return si.content.sessionManager.currentSession.key

    def drop_login(self, si: Any) -> None:
        """Forget the login ``si`` (vCenter said NotAuthenticated to a call made
        outside :meth:`invoke`): the next call logs in again.  A login made since is
        kept."""
        self._shared.drop(si)

    def close(self) -> None:
        if self._owner:
            self._shared.logout()

    # -- calls --------------------------------------------------------------
    def invoke(self, func: Callable[[Any], T], what: str) -> T:
        """Run ``func(service_instance)`` with re-login and retries; ``what`` names it."""
        attempt = 0
        relogged = False
        reconnected = False
        while True:
            attempt += 1
            si = self._shared.si
            had_session = si is not None
            try:
                with self._lock:
                    si = self.si
                    return func(si)
            except vim.fault.NotAuthenticated:
                self._shared.drop(si)
                if relogged:
                    raise errors.VCenterAuthError(
                        f"{what}: vCenter {self.config.url} dropped the session again "
                        "right after a new login")
                relogged = True
                LOG.info("vCenter session expired; logging in again (%s)", what)
                attempt -= 1
                continue
            except vmodl.MethodFault as exc:   # ManagedObjectNotFound, NoPermission...
                raise faults.to_error(exc, what) from exc
            except (errors.VCenterUnreachable,) + _TEMPORARY as exc:
                if _is_cert_error(exc):
                    self._shared.drop(si)
                    raise errors.VCenterCertificateError(
                        f"{what}: vCenter certificate does not verify: {exc}") from exc
                self._shared.drop(si)
                if had_session and not reconnected:
                    # A connection of an older session may have been closed by the
                    # server (restart, idle): one fresh login before counting attempts.
                    reconnected = True
                    attempt -= 1
                    LOG.info("vCenter connection lost (%s); connecting again (%s)", exc, what)
                    continue
                if attempt >= self.config.retries:
                    if isinstance(exc, errors.VCenterUnreachable):
                        raise errors.VCenterUnreachable(f"{what}: {exc}") from exc
                    raise errors.VCenterUnreachable(
                        f"{what}: vCenter {self.config.url} unreachable after "
                        f"{attempt} attempts: {exc}") from exc
                delay = self.config.backoff * (2 ** (attempt - 1))
                LOG.warning("%(what)s: temporary vCenter failure (%(err)s); retry "
                            "%(n)d of %(max)d in %(delay).1f s",
                            {"what": what, "err": exc, "n": attempt,
                             "max": self.config.retries - 1, "delay": delay})
                time.sleep(delay)

    # -- tasks --------------------------------------------------------------
    def wait_for_task(self, task: Any, what: str) -> Any:
        """Wait for ``task`` with the PropertyCollector, bounded by task_timeout."""
        def wait(si: Any) -> Any:
            info = task.info
            if info.state in ("success", "error"):
                return info
            return self._wait_task_updates(si, task, what)

        info = self.invoke(wait, what)
        if info.state == "error":
            # pyVmomi hands TaskInfo.error over as the fault itself (the wire's
            # LocalizedMethodFault wrapper is unwrapped); allow for a wrapper anyway.
            fault = getattr(info.error, "fault", None) or info.error
            if isinstance(fault, vmodl.MethodFault):
                raise faults.to_error(fault, what, task=True) from fault
            if isinstance(fault, BaseException):
                raise fault
            raise errors.VCenterTaskFailed(f"{what}: vCenter task failed")
        return info.result

    def _wait_task_updates(self, si: Any, task: Any, what: str) -> Any:
        pc = si.content.propertyCollector.CreatePropertyCollector()
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=["info.state"])])
            pc.CreateFilter(spec, partialUpdates=False)
            deadline = time.monotonic() + self.config.task_timeout
            version = ""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.VCenterTaskTimeout(
                        f"{what}: task {task._moId} not finished after "
                        f"{self.config.task_timeout:.0f} s")
                options = vmodl.query.PropertyCollector.WaitOptions(
                    maxWaitSeconds=max(1, min(int(left), 30)))
                update = pc.WaitForUpdatesEx(version, options)
                if update is None:
                    continue
                version = update.version
                info = task.info
                if info.state in ("success", "error"):
                    return info
        finally:
            pc.Destroy()

    # -- bulk reads ---------------------------------------------------------
    def retrieve(self, si: Any, obj_type: type, path_set: Sequence[str],
                 root: Any | None = None) -> list[tuple[Any, dict[str, Any]]]:
        """All objects of ``obj_type`` under ``root`` with ``path_set``: one PropertyCollector read.

        Call inside ``invoke``. Returns (managed object, {property: value}) pairs.
        """
        content = si.content
        view = content.viewManager.CreateContainerView(
            root or content.rootFolder, [obj_type], True)
        try:
            traversal = vmodl.query.PropertyCollector.TraversalSpec(
                name="view", path="view", skip=False, type=vim.view.ContainerView)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view, skip=True, selectSet=[traversal])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                    type=obj_type, pathSet=list(path_set))])
            return collect(content.propertyCollector, [spec])
        finally:
            view.Destroy()


def collect(pc: Any, specs: Iterable[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """RetrievePropertiesEx with continuation tokens, flattened to (obj, props)."""
    out: list[tuple[Any, dict[str, Any]]] = []
    result = pc.RetrievePropertiesEx(list(specs), vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        for obj in result.objects:
            out.append((obj.obj, {p.name: p.val for p in (obj.propSet or [])}))
        if not result.token:
            break
        result = pc.ContinueRetrievePropertiesEx(result.token)
    return out


def config_from_conf(group: Any) -> VCenterConfig:
    """Build a VCenterConfig from the ``[ml2_vsphere]`` option group (checked by the caller)."""
    return VCenterConfig(
        url=group.vcenter_url, username=group.username, password=group.password,
        ca_file=group.ca_file, insecure=group.insecure,
        connect_timeout=group.connect_timeout, request_timeout=group.request_timeout,
        retries=group.api_retry_count, task_timeout=group.task_timeout)
