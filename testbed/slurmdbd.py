"""slurmdbd: SLURM's accounting daemon, so `sacct` answers for finished jobs.

slurmctld reports every job to slurmdbd, which stores it in the testbed's MariaDB; `sacct`
then finds a job long after it left `scontrol show job` (MinJobAge). Associations are not
enforced (no AccountingStorageEnforce), so no job ever waits on accounting; the cluster, one
account and the test user are still registered so job records carry a real account.

The database password is made once, kept in a 0600 file and in slurmdbd.conf (0600, owned
by SlurmUser as slurmdbd insists), and never printed.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess

from . import layout, mariadb
from .daemons import Daemon, DaemonError, port_answers, run

log = logging.getLogger("testbed")

CLUSTER = "testbed"  # slurm.conf's ClusterName
ACCOUNT = "testbed"
DATABASE = "slurm_acct_db"
DB_USER = "slurm"
PASSWORD_FILE = layout.MARIADB_DIR / "slurmdbd.password"


def _password() -> str:
    """The database password, made on first use (0600, root)."""
    try:
        return PASSWORD_FILE.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(24)  # letters, digits, - and _: safe inside SQL quotes
    fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    log.info("slurmdbd: generated the database password in %s", PASSWORD_FILE)
    return value


def render_conf(password: str) -> str:
    return f"""\
# Written by `hpc-offload testbed up`; rewritten on each run. Holds a password: 0600.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={layout.SLURMDBD_PORT}
SlurmUser=root
PidFile={layout.RUN_DIR / 'slurmdbd.pid'}
LogFile={layout.log_file('slurmdbd')}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc={DATABASE}
StorageUser={DB_USER}
StoragePass={password}
"""


def prepare() -> str:
    """The database and its user, and slurmdbd.conf; return the config text."""
    password = _password()
    inputs = f"{DATABASE}|{DB_USER}|{password}"
    if not mariadb.done("database", inputs):
        mariadb.ensure_database(DATABASE, DB_USER, password)
        mariadb.mark_done("database", inputs)
    conf = render_conf(password)
    path = layout.SLURMDBD_CONF
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != conf:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(conf)
        os.chmod(tmp, 0o600)  # an older tmp file may have had another mode
        tmp.rename(path)
        log.info("slurmdbd: wrote %s", path)
    return conf


def current_conf() -> str:
    """slurmdbd.conf as last written, or '' (for `down`/`status`; nothing is changed)."""
    try:
        return layout.SLURMDBD_CONF.read_text()
    except OSError:
        return ""


def daemon(conf: str) -> Daemon:
    return Daemon(
        name="slurmdbd",
        argv=("/usr/sbin/slurmdbd", "-D"),
        # libmariadb takes the socket from here when StorageHost is localhost
        env={"MYSQL_UNIX_PORT": str(mariadb.SOCKET)},
        addresses=(f"127.0.0.1:{layout.SLURMDBD_PORT}",),
        config=conf,
        ready=lambda: port_answers("127.0.0.1", layout.SLURMDBD_PORT),
        ready_timeout=120.0,  # the first start creates all of its tables
    )


def _sacctmgr(*args: str) -> str:
    try:
        return run(["sacctmgr", "-i", "-n", "-P", *args], timeout=60).stdout
    except subprocess.TimeoutExpired:
        raise DaemonError(f"'sacctmgr {' '.join(args[:2])}' got no answer from slurmdbd in "
                          f"60 s; read {layout.log_file('slurmdbd')}") from None


def _register_inputs(user: str) -> str:
    return f"{CLUSTER}|{ACCOUNT}|{user}"


def registered(user: str = layout.TEST_USER) -> bool:
    """True once `register` succeeded against this database.

    While it has not, slurmctld must not run: a slurmctld that reaches slurmdbd before its
    cluster exists leaves a transaction open on the cluster's tables, and the `add cluster`
    then waits on that metadata lock for ever (seen after a datadir was made anew).
    """
    return mariadb.done("register", _register_inputs(user))


def register(user: str = layout.TEST_USER) -> None:
    """The cluster, the account and the user's association, each only if missing (asked of
    slurmdbd once per datadir: each sacctmgr call costs a quarter second on a busy node)."""
    inputs = _register_inputs(user)
    if mariadb.done("register", inputs):
        return
    if CLUSTER not in _sacctmgr("show", "cluster", "format=cluster").split():
        _sacctmgr("add", "cluster", CLUSTER)
        log.info("slurmdbd: registered cluster %s", CLUSTER)
    assocs = _sacctmgr("show", "assoc", f"cluster={CLUSTER}", "format=account,user").split()
    if ACCOUNT + "|" not in assocs:
        _sacctmgr("add", "account", ACCOUNT, f"cluster={CLUSTER}",
                  "description=hpc-offload testbed", "organization=hpc-offload")
        log.info("slurmdbd: added account %s", ACCOUNT)
    if f"{ACCOUNT}|{user}" not in assocs:
        _sacctmgr("add", "user", user, f"account={ACCOUNT}", f"cluster={CLUSTER}")
        log.info("slurmdbd: added user %s to account %s", user, ACCOUNT)
    mariadb.mark_done("register", inputs)


def job_record(job_id: int, user: str = layout.TEST_USER) -> dict[str, str] | None:
    """The job's own line in `sacct` (no steps), as that user sees it; None if unknown.

    Final only once End is a time: a job that ended while slurmdbd was down first comes
    back with its end state but ExitCode 0:0 and End=Unknown; slurmctld's queued end record
    (the real exit code) follows some seconds later.
    """
    fields = ("JobID", "State", "ExitCode", "End", "Comment")  # Comment last: it may hold |
    proc = run(["sacct", "-j", str(int(job_id)), "-n", "-P", "-X",
                "-o", ",".join(fields)], user=user, check=False, timeout=30)
    if proc.returncode != 0:
        raise DaemonError(f"sacct -j {job_id} failed: {proc.stderr.strip()}; "
                          f"read {layout.log_file('slurmdbd')}")
    for line in proc.stdout.splitlines():
        values = line.split("|", len(fields) - 1)
        if len(values) == len(fields) and values[0] == str(job_id):
            return dict(zip(fields, values, strict=True))
    return None
