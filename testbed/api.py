"""The testbed as a Python API: what the CLI and the tests call.

`ensure_up` is idempotent and cheap when everything already runs (about a second), so every
test session can call it. Concurrent callers (several pytest processes, an engineer's shell)
serialise on one lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from . import daemons, image, layout, mariadb, munge, packages, rest, sge, slurm, slurmdbd, sshd, users
from . import listen as listen_mod
from .rimrock import service as rimrock

log = logging.getLogger("testbed")


class TestbedError(RuntimeError):
    """Something the testbed needs failed; the message names it and the log to read."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class Info:
    """How to reach the testbed (paths are on this machine)."""

    __test__ = False

    ssh_host: str
    ssh_port: int
    ssh_user: str
    key_path: Path
    known_hosts: Path
    rest_url: str
    rest_api_version: str
    image_dir: Path
    workdir: Path
    partition: str
    state_dir: Path
    log_dir: Path
    slurm_conf: Path
    listen: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def info() -> Info:
    addresses = tuple(listen_mod.remembered()) or (layout.DEFAULT_ADDRESS,)
    return Info(
        ssh_host=layout.DEFAULT_ADDRESS,
        ssh_port=layout.SSH_PORT,
        ssh_user=layout.TEST_USER,
        key_path=layout.CLIENT_KEY,
        known_hosts=layout.KNOWN_HOSTS,
        rest_url=rest.url(),
        rest_api_version=layout.REST_API_VERSION,
        image_dir=image.image_dir(),
        workdir=layout.WORKDIR,
        partition=layout.PARTITION,
        state_dir=layout.STATE_DIR,
        log_dir=layout.LOG_DIR,
        slurm_conf=layout.SLURM_CONF,
        listen=addresses,
    )


@contextmanager
def _locked() -> Iterator[None]:
    layout.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(layout.LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _specs(addresses: tuple[str, ...], conf: str, ssh_conf: str,
           sge_conf: str = "") -> list[daemons.Daemon]:
    """All daemons in start order (stop in reverse)."""
    return [
        munge.daemon(),
        mariadb.daemon(),
        slurmdbd.daemon(slurmdbd.current_conf()),
        slurm.ctld_daemon(conf),
        slurm.slurmd_daemon(conf),
        rest.daemon(addresses, conf),
        sshd.daemon(addresses, ssh_conf),
        sge.qmaster_daemon(sge_conf),
        sge.execd_daemon(sge_conf),
        rimrock.daemon(addresses),
    ]


def _current_specs() -> list[daemons.Daemon]:
    """Specs as last written, for `down` and `status` (no files are changed)."""
    addresses = tuple(listen_mod.remembered()) or (layout.DEFAULT_ADDRESS,)
    conf = layout.SLURM_CONF.read_text() if layout.SLURM_CONF.exists() else ""
    ssh_conf = sshd.CONFIG.read_text() if sshd.CONFIG.exists() else ""
    return _specs(addresses, conf, ssh_conf, sge.config_text())


def ensure_up(listen: Iterable[str] = (), forget_listen: bool = False) -> Info:
    """Install, configure and start whatever is missing; return how to reach the testbed."""
    started = time.monotonic()
    try:
        with _locked():
            packages.ensure_packages(layout.log_file("apt"))
            addresses = listen_mod.resolve(listen, forget=forget_listen)
            users.ensure_test_user()
            users.ensure_system_user(layout.REST_USER)
            image.ensure_image()

            munge.prepare()
            munge_spec = munge.daemon()
            if daemons.running_pid(munge_spec) is None and munge.works():
                log.info("munged: already served on %s by a daemon we did not start; using it",
                         layout.MUNGE_SOCKET)
            else:
                daemons.ensure(munge_spec)

            conf = slurm.prepare()
            ssh_conf = sshd.prepare(addresses)
            rimrock.prepare(addresses)
            mariadb.prepare()
            daemons.ensure(mariadb.daemon())
            slurmdbd.prepare()  # the database, its user and slurmdbd.conf
            specs = {d.name: d for d in _specs(addresses, conf, ssh_conf)}
            if not slurmdbd.registered():  # a new database: no slurmctld before its cluster
                daemons.stop(specs["slurmctld"])
            daemons.ensure(specs["slurmdbd"])
            slurmdbd.register()  # cluster, account, test user (before slurmctld registers)
            daemons.ensure(specs["slurmctld"])
            daemons.ensure(specs["slurmd"])
            state = slurm.wait_node_usable()
            log.info("node %s: %s", slurm.node_name(), state.lower())
            daemons.ensure(specs["slurmrestd"])
            daemons.ensure(specs["sshd"])
            daemons.ensure(rimrock.daemon(addresses))
            _ensure_sge(_specs(addresses, conf, ssh_conf, sge.prepare()))
    except (daemons.DaemonError, packages.PackageError, listen_mod.ListenError, OSError) as exc:
        raise TestbedError(str(exc)) from exc
    log.info("up in %.1f s (listening on %s)", time.monotonic() - started,
             ", ".join(addresses))
    return info()


def _ensure_sge(specs: list[daemons.Daemon]) -> None:
    """Grid Engine beside SLURM: qmaster, its settings, execd, the queue; wait until usable."""
    by_name = {s.name: s for s in specs}
    daemons.ensure(by_name["sge_qmaster"])
    if sge.configure_master():  # execd reads the global configuration when it starts
        daemons.stop(by_name["sge_execd"])
    daemons.ensure(by_name["sge_execd"])
    sge.configure_queue()
    sge.wait_queue_usable()


def down() -> list[str]:
    """Stop what `up` started, by its pid files; keep packages, keys and SLURM state."""
    stopped = []
    with _locked():
        for spec in reversed(_current_specs()):
            if daemons.stop(spec):
                stopped.append(spec.name)
            else:
                log.info("%s: not running", spec.name)
    return stopped


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    running: bool
    pid: int | None
    addresses: tuple[str, ...]
    note: str = ""


def status() -> list[DaemonStatus]:
    out = []
    for spec in _current_specs():
        pid = daemons.running_pid(spec)
        note = ""
        running = pid is not None
        if spec.name == "munged" and pid is None and munge.works():
            running, note = True, "started by someone else"
        elif running and spec.ready is not None and not spec.ready():
            running, note = False, "process alive but not answering"
        out.append(DaemonStatus(spec.name, running, pid, spec.addresses, note))
    return out


def break_ssh(listener_too: bool = False) -> int:
    """Fault injection for tests: SIGKILL every open SSH session of the testbed's sshd (and the
    listener itself with listener_too, i.e. sshd down until the next `ensure_up`). Returns how
    many processes were killed. The session processes are found as the listener's descendants."""
    listener = daemons.running_pid(next(s for s in _current_specs() if s.name == "sshd"))
    if listener is None:
        return 0
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    victims, todo = [], list(children.get(listener, []))
    while todo:
        pid = todo.pop()
        victims.append(pid)
        todo.extend(children.get(pid, []))
    if listener_too:
        victims.append(listener)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a session may end on its own meanwhile
            os.kill(pid, signal.SIGKILL)
    return len(victims)


def authorize_key(pubkey_line: str) -> bool:
    """Let a public key (one authorized_keys line) log in as the test user."""
    return sshd.authorize_key(pubkey_line)


def revoke_key(pubkey_line: str) -> bool:
    return sshd.revoke_key(pubkey_line)


def rest_token(lifespan: int = 3600, user: str = layout.TEST_USER) -> str:
    """A slurmrestd JWT for the test user. Secret: do not log it."""
    return slurm.token(user, lifespan)


def job_info(job_id: int) -> dict[str, str] | None:
    return slurm.job_info(job_id)


def queued_job_ids() -> set[int]:
    return slurm.queued_job_ids()


def clear_queues(timeout: float = 60.0) -> int:
    """Cancel every job the test user still has in SLURM and Grid Engine and wait until both
    queues list none: a test run starts from an empty node, whatever an earlier run, a
    benchmark or a killed connector left there (two CPUs held by leftovers block every test
    job behind them). Returns how many jobs were cancelled."""
    with _locked():
        left = len(slurm.queued_job_ids()) + len(sge.job_ids())
        if not left:
            return 0
        daemons.run(["scancel", "--user", layout.TEST_USER], timeout=30, check=False)
        # a plain qdel: execd ends the job and reports it (`-f` only for what is left: it makes
        # qmaster forget a job that execd may still hold and report after its next restart)
        sge.qcmd("qdel", "-u", layout.TEST_USER, check=False)
        deadline = time.monotonic() + timeout
        forced = False
        while slurm.queued_job_ids() or sge.job_ids():
            if not forced and time.monotonic() > deadline - timeout / 2 and sge.job_ids():
                sge.qcmd("qdel", "-f", "-u", layout.TEST_USER, check=False)
                forced = True
            if time.monotonic() > deadline:
                raise TestbedError(f"jobs still queued {timeout:.0f} s after cancelling them: "
                                   f"SLURM {sorted(slurm.queued_job_ids())}, "
                                   f"Grid Engine {sorted(sge.job_ids())}")
            time.sleep(0.5)
        log.info("cancelled %d leftover job(s) of %s", left, layout.TEST_USER)
        return left
