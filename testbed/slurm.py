"""slurmctld and slurmd on one node, and the few SLURM queries the tests need.

The settings are the ones verified on this machine kind (see /work/shared/FACTS.md): no
cgroups (linuxproc/none), per-CPU memory so jobs can share the node (layout.SLOTS CPUs, more than
the machine's cores: test jobs mostly sleep), and no batch
scheduling delay so a trivial job finishes in about a second. Finished jobs stay in
`scontrol show job` for MinJobAge; after that `sacct` knows them (accounting through the
testbed's slurmdbd, see slurmdbd.py; associations are not enforced, so jobs never wait on it).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path

from . import layout
from .daemons import Daemon, DaemonError, port_answers, run

log = logging.getLogger("testbed")

JWT_KEY = layout.SLURM_DIR / "jwt.key"
CTLD_STATE = layout.SLURM_DIR / "ctld"
SLURMD_SPOOL = layout.SLURM_DIR / "d"


def node_name() -> str:
    """slurmd finds its node by the short host name."""
    return socket.gethostname().split(".")[0]


def real_memory_mb() -> int:
    """What the node may hand out: 90 % of RAM, so slurmd never finds less than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 2048


OVERSUBSCRIBE_ENV = "HPC_OFFLOAD_TESTBED_OVERSUBSCRIBE"  # "CPUSxJOBS", e.g. 64x16 (bench/scale.py)


def oversubscribed() -> tuple[int, int] | None:
    """(CPUs, jobs per CPU) when a benchmark asks for many concurrent jobs on this small node:
    the node claims that many CPUs (config_overrides), each shared by that many jobs, with
    little memory per CPU (the jobs sleep). None (the default): layout.SLOTS CPUs."""
    match = re.fullmatch(r"(\d+)x(\d+)", os.environ.get(OVERSUBSCRIBE_ENV, ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def render_conf() -> str:
    many = oversubscribed()
    cpus, mem_per_cpu = (many[0], 16) if many else (layout.SLOTS, 500)
    # the node claims more CPUs than the machine has (slurmd would drain it without this)
    node_extra = "\nSlurmdParameters=config_overrides"
    share = f" OverSubscribe=FORCE:{many[1]}" if many else ""
    # Each job step's accounting thread reads every /proc entry of the node every 30 s: on one
    # node holding 1,000 jobs (3,000 processes) that is O(N^2) and kept 80 % of this machine in
    # the kernel (load 195, submissions stalled at 794). A site spreads its jobs over nodes; the
    # bench's node samples nothing and sacct still gets each job's end.
    sampling = "\nJobAcctGatherFrequency=task=0" if many else ""
    return f"""\
# Written by `hpc-offload testbed up`; rewritten on each run (edits here are lost).
ClusterName=testbed
SlurmctldHost={node_name()}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={layout.SLURMCTLD_PORT}
SlurmdPort={layout.SLURMD_PORT}
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={JWT_KEY}
StateSaveLocation={CTLD_STATE}
SlurmdSpoolDir={SLURMD_SPOOL}
SlurmctldPidFile={layout.RUN_DIR / 'slurmctld.pid'}
SlurmdPidFile={layout.RUN_DIR / 'slurmd.pid'}
SlurmctldLogFile={layout.log_file('slurmctld')}
SlurmdLogFile={layout.log_file('slurmd')}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={layout.SLURMDBD_PORT}
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux{sampling}
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
DefMemPerCPU={mem_per_cpu}
SchedulerParameters=batch_sched_delay=0
KillWait=5
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=300
NodeName={node_name()} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb()} State=UNKNOWN{node_extra}
PartitionName={layout.PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP{share}
"""


def prepare() -> str:
    """Write slurm.conf, the jwt key and the state dirs; return the config text."""
    # slurmstepd execs the batch script from the spool dir as the job's user
    for path, mode in ((layout.SLURM_DIR, 0o755), (CTLD_STATE, 0o700), (SLURMD_SPOOL, 0o755)):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    if not JWT_KEY.exists():
        fd = os.open(JWT_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        log.info("slurm: generated jwt key %s", JWT_KEY)
    conf = render_conf()
    layout.SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    if not layout.SLURM_CONF.exists() or layout.SLURM_CONF.read_text() != conf:
        tmp = layout.SLURM_CONF.with_suffix(".tmp")
        tmp.write_text(conf)
        os.chmod(tmp, 0o644)
        tmp.rename(layout.SLURM_CONF)
        log.info("slurm: wrote %s", layout.SLURM_CONF)
    return conf


def _daemon(name: str, port: int, conf: str) -> Daemon:
    """slurmctld or slurmd in the foreground; ready once it answers on its port."""
    return Daemon(
        name=name,
        argv=(f"/usr/sbin/{name}", "-D"),
        addresses=(f"127.0.0.1:{port}",),
        config=conf,
        ready=lambda: port_answers("127.0.0.1", port),
    )


def ctld_daemon(conf: str) -> Daemon:
    return _daemon("slurmctld", layout.SLURMCTLD_PORT, conf)


def slurmd_daemon(conf: str) -> Daemon:
    return _daemon("slurmd", layout.SLURMD_PORT, conf)


def node_state() -> str:
    """The node's State= from scontrol (e.g. IDLE, MIXED, DOWN+NOT_RESPONDING), or ''."""
    proc = run(["scontrol", "show", "node", node_name(), "-o"], check=False, timeout=15)
    match = re.search(r"\bState=(\S+)", proc.stdout)
    return match.group(1) if match else ""


def wait_node_usable(timeout: float = 60.0) -> str:
    """Wait until the node takes jobs: idle, or busy with other people's jobs."""
    deadline = time.monotonic() + timeout
    resumed = False
    state = ""
    while time.monotonic() < deadline:
        state = node_state()
        base, *flags = state.split("+")
        if base in ("IDLE", "MIXED", "ALLOCATED", "COMPLETING") and not (
            {"NOT_RESPONDING", "DRAIN", "DRAINED", "DRAINING", "INVALID_REG"} & set(flags)
        ):
            return state
        if not resumed and (base == "DOWN" or "DRAIN" in flags) and \
                "NOT_RESPONDING" not in flags:
            # left over from an earlier crash: slurmd is back, so put the node in service
            run(["scontrol", "update", f"nodename={node_name()}", "state=resume"],
                check=False)
            resumed = True
        time.sleep(0.2)
    raise DaemonError(f"node {node_name()} not usable after {timeout:.0f} s (state "
                      f"{state or 'unknown'}); read {layout.log_file('slurmd')} and "
                      f"{layout.log_file('slurmctld')}")


def token(user: str, lifespan: int) -> str:
    """A JWT for `user` (never logged: the caller decides where it goes)."""
    proc = run(["scontrol", "token", f"username={user}", f"lifespan={int(lifespan)}"])
    match = re.search(r"SLURM_JWT=(\S+)", proc.stdout)
    if not match:
        raise DaemonError("'scontrol token' printed no SLURM_JWT=…; "
                          f"read {layout.log_file('slurmctld')}")
    return match.group(1)


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")


def parse_oneliner(line: str) -> dict[str, str]:
    """`Key=value Key2=value with spaces` (scontrol -o) → dict; values may contain spaces."""
    out: dict[str, str] = {}
    matches = list(_FIELD.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def job_info(job_id: int) -> dict[str, str] | None:
    """`scontrol show job -o ID` as a dict, or None once SLURM no longer knows the job."""
    proc = run(["scontrol", "show", "job", "-o", str(int(job_id))], check=False, timeout=15)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise DaemonError(f"'scontrol show job {job_id}' failed: {proc.stderr.strip()}")
    line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    return parse_oneliner(line) if line else None


def queued_job_ids() -> set[int]:
    """Ids of jobs pending or running (squeue's default states; finished ones are not)."""
    proc = run(["squeue", "-a", "-h", "-o", "%A"], timeout=15)
    return {int(x) for x in proc.stdout.split() if x.isdigit()}
