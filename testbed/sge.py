"""Grid Engine (Debian's gridengine 8.1.9) on this host: sge_qmaster, sge_execd, one queue.

The packages keep their own places (SGE_ROOT /var/lib/gridengine, cell `default`, spool under
/var/spool/gridengine), so the client wrappers in /usr/bin work for every user over SSH with
no environment. What made it run here (see /work/shared/FACTS.md): `act_qmaster` naming this
host, a `host_aliases` line that makes `localhost` (what 127.0.0.1 resolves back to) the same
host, both daemons started directly in the foreground (SGE_ND) with our pid files, and a queue
whose `pe_list` names only parallel environments that exist. The scheduler runs every second
and accounting is flushed at once, so a trivial job is in `qacct` about 2 s after `qsub`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from . import layout
from .daemons import Daemon, DaemonError, port_answers

log = logging.getLogger("testbed")

ADMIN_USER = "sgeadmin"  # created by gridengine-common; the daemons switch to it themselves
BIN = Path("/usr/lib/gridengine")  # the real programs (the /usr/bin wrappers cost 80 ms each)
COMMON = layout.SGE_ROOT / layout.SGE_CELL / "common"
SPOOL_DB = Path("/var/spool/gridengine/spooldb")
INIT_CLUSTER = Path("/usr/share/gridengine/scripts/init_cluster")
DEFAULT_BOOTSTRAP = Path("/usr/share/gridengine/default-bootstrap")

# global configuration (sge_conf(5)): accounting written as soon as a job ends, so `qacct`
# answers right after the job leaves `qstat`; execd reports load every 10 s instead of 40;
# root may run jobs (min_uid 0), as it may in the testbed's SLURM: the `sge-local` tests run
# the connector as root, like `slurm-local`'s
GLOBAL_CONF = {
    "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false "
                        "sharelog=00:00:00 accounting_flush_time=00:00:00",
    "load_report_time": "00:00:10",
    "min_uid": "0",
    "min_gid": "0",
}
# scheduler (sched_conf(5)): a run every second and right after each submit and job end;
# no load adjustment, so back-to-back jobs on the 2-core host do not wait for load to decay
SCHED_CONF = {
    "schedule_interval": "0:0:1",
    "flush_submit_sec": "1",
    "flush_finish_sec": "1",
    "job_load_adjustments": "NONE",
    "load_adjustment_decay_time": "0:0:0",
}
QUEUE_TEMPLATE = """\
qname {qname}
hostlist NONE
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
qtype BATCH INTERACTIVE
ckpt_list NONE
pe_list NONE
rerun FALSE
slots 1
tmpdir /tmp
shell /bin/sh
prolog NONE
epilog NONE
shell_start_mode posix_compliant
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
s_rt INFINITY
h_rt INFINITY
s_cpu INFINITY
h_cpu INFINITY
s_fsize INFINITY
h_fsize INFINITY
s_data INFINITY
h_data INFINITY
s_stack INFINITY
h_stack INFINITY
s_core INFINITY
h_core INFINITY
s_rss INFINITY
h_rss INFINITY
s_vmem INFINITY
h_vmem INFINITY
"""
# a queue instance in any of these states takes no jobs (qstat(1): unknown, error, disabled,
# alarm, suspended, calendar-disabled/suspended, configuration ambiguous, orphaned)
UNUSABLE_STATES = set("uEdDaAsSCco")


def host_name() -> str:
    """The short host name, which SGE resolves to 127.0.0.1 via /etc/hosts."""
    return socket.gethostname().split(".")[0]


def slots() -> int:
    return layout.SLOTS


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "SGE_ROOT": str(layout.SGE_ROOT), "SGE_CELL": layout.SGE_CELL}


def qcmd(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a Grid Engine client program as root (a manager), e.g. qcmd("qconf", "-ss")."""
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, env=_env(), check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DaemonError(f"'{' '.join(args[:2])}' failed (exit {proc.returncode}): "
                          + " / ".join(err) + f"; read {qmaster_messages()}")
    return proc


def qmaster_messages() -> Path:
    return Path("/var/spool/gridengine/qmaster/messages")


def _files() -> dict[Path, str]:
    """The cell files we own, with the content they must have."""
    host = host_name()
    return {
        COMMON / "act_qmaster": f"{host}\n",
        COMMON / "host_aliases": f"{host} localhost\n",
    }


def config_text() -> str:
    """What the daemons were started with (their restart signature), read without writing."""
    parts = []
    for path in (*_files(), COMMON / "bootstrap"):
        try:
            parts.append(f"# {path}\n{path.read_text()}")
        except OSError:
            parts.append(f"# {path}: missing\n")
    return "".join(parts)


def prepare() -> str:
    """Create the cell if the packages did not, write its host files; return config_text()."""
    admin = pwd.getpwnam(ADMIN_USER)
    COMMON.mkdir(parents=True, exist_ok=True)
    for path in (layout.SGE_ROOT, layout.SGE_ROOT / layout.SGE_CELL, COMMON):
        shutil.chown(path, admin.pw_uid, admin.pw_gid)
    if not (COMMON / "bootstrap").exists():
        shutil.copyfile(DEFAULT_BOOTSTRAP, COMMON / "bootstrap")
        shutil.chown(COMMON / "bootstrap", admin.pw_uid, admin.pw_gid)
        os.chmod(COMMON / "bootstrap", 0o644)
    if not (SPOOL_DB / "sge").exists():  # the package's postinst skips this when unconfigured
        SPOOL_DB.mkdir(parents=True, exist_ok=True)
        shutil.chown(SPOOL_DB, admin.pw_uid, admin.pw_gid)
        proc = subprocess.run(
            [str(INIT_CLUSTER), str(layout.SGE_ROOT), layout.SGE_CELL, str(SPOOL_DB), ADMIN_USER],
            capture_output=True, text=True, user=ADMIN_USER, env=_env(), check=False)
        if proc.returncode != 0:
            raise DaemonError(f"gridengine: {INIT_CLUSTER} failed (exit {proc.returncode}): "
                              f"{proc.stdout.strip()[-300:]} {proc.stderr.strip()[-300:]}")
        log.info("gridengine: initialised cell %s", layout.SGE_CELL)
    for path, text in _files().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            shutil.chown(path, admin.pw_uid, admin.pw_gid)
            os.chmod(path, 0o644)
            log.info("gridengine: wrote %s", path)
    return config_text()


def _qmaster_answers() -> bool:
    return port_answers("127.0.0.1", layout.SGE_QMASTER_PORT) and \
        qcmd("qconf", "-sh", check=False, timeout=10).returncode == 0


def qmaster_daemon(conf: str) -> Daemon:
    """sge_qmaster as root (it drops to sgeadmin itself); SGE_ND keeps it in the foreground."""
    return Daemon(
        name="sge_qmaster",
        argv=(str(BIN / "sge_qmaster"),),
        env={**_env(), "SGE_ND": "1"},
        addresses=(f"0.0.0.0:{layout.SGE_QMASTER_PORT}",),
        config=conf,
        ready=_qmaster_answers,
    )


def execd_daemon(conf: str) -> Daemon:
    """sge_execd as root: its shepherds start each job as the job's owner."""
    return Daemon(
        name="sge_execd",
        argv=(str(BIN / "sge_execd"),),
        env={**_env(), "SGE_ND": "1"},
        addresses=(f"0.0.0.0:{layout.SGE_EXECD_PORT}",),
        config=conf,
        ready=lambda: port_answers("127.0.0.1", layout.SGE_EXECD_PORT),
    )


def parse_conf(text: str) -> dict[str, str]:
    """`key value…` lines (continuations joined, comments dropped) → dict, in order."""
    out: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        out[key] = " ".join(value.split())
    return out


def _render(conf: Mapping[str, str]) -> str:
    return "".join(f"{k} {v}\n" for k, v in conf.items())


def _apply(option: str, conf: Mapping[str, str], file_name: str = "conf") -> None:
    """Feed `qconf OPTION FILE` a whole object (qconf -M… replaces, it does not merge)."""
    with tempfile.TemporaryDirectory(prefix="hpc-offload-sge-") as tmp:
        path = Path(tmp) / file_name  # -Mconf takes the host (here: `global`) from the name
        path.write_text(_render(conf))
        qcmd("qconf", option, str(path))


def _differs(current: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return any(current.get(k) != " ".join(v.split()) for k, v in wanted.items())


def _ensure_object(kind: str, name: str, wanted: Mapping[str, str], template: str) -> None:
    """Make one named object (-Ap/-Mp parallel environment, -Aq/-Mq queue) match `wanted`."""
    show, add, modify = {"pe": ("-sp", "-Ap", "-Mp"), "queue": ("-sq", "-Aq", "-Mq")}[kind]
    proc = qcmd("qconf", show, name, check=False)
    if proc.returncode != 0:
        _apply(add, {**parse_conf(template), **wanted})
        log.info("gridengine: added %s %s", kind, name)
    elif _differs(current := parse_conf(proc.stdout), wanted):
        _apply(modify, {**current, **wanted})
        log.info("gridengine: updated %s %s", kind, name)


PE_TEMPLATE = """\
pe_name {name}
slots 0
user_lists NONE
xuser_lists NONE
start_proc_args NONE
stop_proc_args NONE
allocation_rule $pe_slots
control_slaves FALSE
job_is_first_task TRUE
urgency_slots min
accounting_summary FALSE
qsort_args NONE
"""


def configure_master() -> bool:
    """Global and scheduler settings, this host as submit host, the parallel environment.
    True if the global configuration changed (a running execd keeps the one it started with)."""
    current = parse_conf(qcmd("qconf", "-sconf", "global").stdout)
    changed = _differs(current, GLOBAL_CONF)
    if changed:
        _apply("-Mconf", {**current, **GLOBAL_CONF}, file_name="global")
        log.info("gridengine: global configuration updated")
    current = parse_conf(qcmd("qconf", "-ssconf").stdout)
    if _differs(current, SCHED_CONF):
        _apply("-Msconf", {**current, **SCHED_CONF})
        log.info("gridengine: scheduler configuration updated")
    host = host_name()
    if host not in qcmd("qconf", "-ss", check=False).stdout.split():
        qcmd("qconf", "-as", host)
    pe = layout.SGE_PE
    _ensure_object("pe", pe, {"pe_name": pe, "slots": str(slots())},
                   PE_TEMPLATE.format(name=pe))
    return changed


def configure_queue() -> None:
    """One queue on this host (after execd registered it as an execution host)."""
    queue = layout.SGE_QUEUE
    _ensure_object("queue", queue, {
        "qname": queue, "hostlist": host_name(), "slots": str(slots()),
        "pe_list": layout.SGE_PE, "load_thresholds": "NONE",
    }, QUEUE_TEMPLATE.format(qname=queue))


def queue_state() -> str | None:
    """The state letters of this host's queue instance ('' = usable), None if not listed."""
    proc = qcmd("qstat", "-f", "-q", layout.SGE_QUEUE, "-xml", check=False, timeout=15)
    if proc.returncode != 0:
        return None
    try:
        root = ET.fromstring(proc.stdout)  # noqa: S314 - our own qstat, run as root
    except ET.ParseError:
        return None
    want = f"{layout.SGE_QUEUE}@{host_name()}"
    for q in root.iter("Queue-List"):
        if q.findtext("name") == want:
            return q.findtext("state") or ""
    return None


def wait_queue_usable(timeout: float = 60.0) -> None:
    """Wait until the queue instance takes jobs (execd has reported in, no error state)."""
    deadline = time.monotonic() + timeout
    cleared = False
    state: str | None = None
    while time.monotonic() < deadline:
        state = queue_state()
        if state is not None and not UNUSABLE_STATES & set(state):
            return
        if state and "E" in state and not cleared:  # left over from an earlier crash
            qcmd("qmod", "-c", f"{layout.SGE_QUEUE}@{host_name()}", check=False)
            cleared = True
        time.sleep(0.2)
    raise DaemonError(f"queue {layout.SGE_QUEUE}@{host_name()} not usable after {timeout:.0f} s "
                      f"(state {state!r}); read {qmaster_messages()} and "
                      "/var/spool/gridengine/execd/*/messages")


def job_ids() -> set[int]:
    """Ids of jobs Grid Engine still lists (pending, running, being deleted), any user."""
    proc = qcmd("qstat", "-u", "*", "-xml", timeout=15)
    root = ET.fromstring(proc.stdout)  # noqa: S314 - our own qstat, run as root
    return {int(x.text) for x in root.iter("JB_job_number") if x.text and x.text.isdigit()}


def accounting(job_id: int) -> dict[str, str] | None:
    """`qacct -j ID` as a dict (its first record), or None while it has none."""
    proc = qcmd("qacct", "-j", str(int(job_id)), check=False, timeout=15)
    if proc.returncode != 0:
        return None
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("====") and out:
            break
        key, _, value = line.partition(" ")
        if key and not key.startswith("="):
            out[key] = value.strip()
    return out


def jobs_named(name: str) -> list[str]:
    """Ids of every job with this name, any user: still queued (qstat) or finished (qacct)."""
    proc = qcmd("qstat", "-u", "*", "-xml", timeout=15)
    root = ET.fromstring(proc.stdout)  # noqa: S314 - our own qstat, run as root
    ids = {(job.findtext("JB_job_number") or "").strip() for job in root.iter("job_list")
           if (job.findtext("JB_name") or "").strip() == name}
    acct = qcmd("qacct", "-j", name, check=False, timeout=30)
    for line in acct.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "jobnumber":
            ids.add(value.strip())
    return sorted((i for i in ids if i), key=int)
