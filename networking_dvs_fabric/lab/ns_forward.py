"""A TCP forwarder from a host namespace's loopback to the lab's own loopback.

The lab's agent hosts (``net-1``, ``kvm-1``) are network namespaces: their Open
vSwitch, their Neutron agents and the namespaces those agents make live there, as
on a physical host.  Their agents still need the message bus, which listens on the
lab's 127.0.0.1 only.  This process plays the host's management network: it binds
``127.0.0.1:<port>`` inside the host's namespace and carries each connection to
``127.0.0.1:<port>`` of the namespace it was started in.  A socket keeps the
namespace it was created in, so the listener is made after ``setns`` into the host
and every outgoing connection after ``setns`` back.

Run: ``python -m networking_dvs_fabric.lab.ns_forward NAMESPACE PORT [PORT...]``
(root: ``setns`` needs CAP_SYS_ADMIN).
"""
from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in(namespace: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1:port inside ``namespace``; returns to the caller's
    namespace before returning."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        setns(target)
        try:
            listeners = []
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(64)
                listeners.append(sock)
            return listeners
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError as exc:       # EMFILE, ECONNABORTED: keep serving the others
            print(f"accept on port {port}: {exc}", flush=True)
            time.sleep(0.5)
            continue
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()          # the bus is down: the client sees a reset and retries
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: ns_forward NAMESPACE PORT [PORT...]", file=sys.stderr)
        return 2
    namespace, ports = argv[0], [int(p) for p in argv[1:]]
    listeners = listen_in(namespace, ports)
    threads = [threading.Thread(target=_serve, args=(sock, port), daemon=True)
               for sock, port in zip(listeners, ports)]
    for thread in threads:
        thread.start()
    print(f"forwarding 127.0.0.1:{','.join(map(str, ports))} of {namespace} to this "
          "namespace's loopback", flush=True)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
