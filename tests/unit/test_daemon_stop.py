"""A stopped lab daemon is really stopped, so that a restart starts a new one.

A multi-threaded program (govmomi's simulator is one) can look gone to the lab while its
last threads still exit: its main thread already a zombie, the process not reapable yet.
The lab then took it as still running and ``restart_with`` started nothing (a quarter of
``test_restart_with_new_password_and_untrusted_cert``'s runs were refused connections).
The program below ends the same way on SIGTERM: its main thread exits, one thread lives
on for as many seconds as its argument says (past the stop's timeout: SIGKILL).
"""
import sys
import textwrap
from pathlib import Path

from networking_dvs_fabric.lab.procs import Daemon, pid_alive, wait_until

SLOW_TO_EXIT = textwrap.dedent("""
    import ctypes, signal, sys, threading, time
    def on_term(*_):
        threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()
        ctypes.CDLL(None).pthread_exit(None)      # the main thread goes, one stays
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
""")


def _started(tmp_path: Path, linger: float) -> Daemon:
    """The program started and ready; its last thread lingers ``linger`` s at a stop."""
    program = tmp_path / "slow_to_exit.py"
    program.write_text(SLOW_TO_EXIT)
    log = tmp_path / "daemon.log"
    daemon = Daemon("slow", [sys.executable, str(program), str(linger)], log).start()
    try:
        wait_until(lambda: "ready" in log.read_text(), 10, "the program's start",
                   alive=daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def test_a_daemon_whose_last_thread_is_still_exiting_is_stopped_and_starts_again(
        tmp_path: Path) -> None:
    daemon = _started(tmp_path, linger=1.0)
    try:
        first = daemon.pid
        daemon.stop()
        assert not daemon.running()
        assert first is not None and not pid_alive(first)

        daemon.start()                       # what restart_with does next
        assert daemon.pid != first and daemon.running()
    finally:
        daemon.stop()
    assert not daemon.running()


def test_a_daemon_whose_last_thread_outlives_the_stop_timeout_is_killed(
        tmp_path: Path) -> None:
    # The main thread gone on SIGTERM, one thread lingering for a minute: the group
    # looks gone, yet the program runs on; past the timeout it gets SIGKILL.
    daemon = _started(tmp_path, linger=60)
    try:
        pid = daemon.pid
        daemon.stop(timeout=1.0)
        assert not daemon.running()
        assert pid is not None and not pid_alive(pid)
    finally:
        daemon.stop()
