"""A MariaDB server of the testbed's own, the store slurmdbd keeps SLURM's accounting in.

Started directly (no systemd) as user `mysql` with its own datadir, socket and pid file
under the state dir, and no TCP port (`--skip-networking`): it never meets the machine's
own /var/lib/mysql or a server someone else runs. root logs in through the socket by its
OS identity (unix_socket), so no administrator password exists to leak; the one password,
slurmdbd's, goes to the server on stdin, never on a command line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from . import layout
from .daemons import Daemon, DaemonError

log = logging.getLogger("testbed")

USER = "mysql"  # created by the mariadb-server package
DATA = layout.MARIADB_DIR / "data"
RUN = layout.MARIADB_DIR / "run"
SOCKET = RUN / "mariadbd.sock"
PID_FILE = RUN / "mariadbd.pid"  # mariadbd's own; daemons.py keeps another in RUN_DIR

# Small on a 2-core test machine; the lock wait is the one slurmdbd asks for (it warns
# below 900 s). Passed to mariadb-install-db too, so the files it creates fit the server.
SERVER_OPTIONS: tuple[str, ...] = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--innodb-lock-wait-timeout=900",
)


def _chown(path: Path) -> None:
    entry = pwd.getpwnam(USER)
    shutil.chown(path, entry.pw_uid, entry.pw_gid)


def prepare() -> None:
    """Directories owned by `mysql`, and the system tables once (`mariadb-install-db`).

    The tables are made in a scratch dir and renamed into place, so an interrupted first
    run leaves no half-made datadir that would pass for a real one.
    """
    for path, mode in ((layout.MARIADB_DIR, 0o750), (RUN, 0o755)):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        _chown(path)
    if (DATA / "mysql").is_dir():
        return
    scratch = layout.MARIADB_DIR / "data.new"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    _chown(scratch)
    logfile = layout.log_file("mariadb-install-db")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log.info("mariadb: creating the system tables in %s (mariadb-install-db)", DATA)
    with open(logfile, "ab") as out:
        try:
            rc = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--user={USER}", f"--datadir={scratch}",
                 "--auth-root-authentication-method=socket", "--skip-test-db",
                 "--skip-name-resolve", *SERVER_OPTIONS],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                check=False, timeout=300,
            ).returncode
        except subprocess.TimeoutExpired:
            raise DaemonError(f"mariadb-install-db took over 300 s; read {logfile}") from None
    if rc != 0:
        raise DaemonError(f"mariadb-install-db failed (exit {rc}); read {logfile}")
    shutil.rmtree(DATA, ignore_errors=True)
    for marker in layout.MARIADB_DIR.glob("*.done"):  # they spoke of the old datadir
        marker.unlink()
    scratch.rename(DATA)


def _marker(step: str) -> Path:
    return layout.MARIADB_DIR / f"{step}.done"


def _digest(inputs: str) -> str:
    return hashlib.sha256(inputs.encode()).hexdigest()


def done(step: str, inputs: str) -> bool:
    """True if `step` already ran with these inputs against this datadir (a warm `up` then
    skips the client round trips). Delete the *.done files to make `up` redo them."""
    try:
        return _marker(step).read_text().strip() == _digest(inputs)
    except OSError:
        return False


def mark_done(step: str, inputs: str) -> None:
    """Record that `step` succeeded with these inputs (only their hash is written)."""
    _marker(step).write_text(_digest(inputs) + "\n")


def answers() -> bool:
    """True once the server greets on its socket (protocol 10 handshake, not an error)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(SOCKET))
            head = sock.recv(5)
    except OSError:
        return False
    return len(head) == 5 and head[4] == 10


def daemon() -> Daemon:
    return Daemon(
        name="mariadbd",
        argv=("/usr/sbin/mariadbd", "--no-defaults", f"--datadir={DATA}",
              f"--socket={SOCKET}", f"--pid-file={PID_FILE}", "--skip-networking",
              "--skip-name-resolve", "--skip-log-bin", *SERVER_OPTIONS),
        user=USER,
        addresses=(str(SOCKET),),
        ready=answers,
        ready_timeout=60.0,
    )


def sql(statements: str, secret: str = "") -> str:
    """Run statements as the database's root (socket auth); return what they print.

    They go on stdin, so a password inside never shows in `ps`; if one is given as
    `secret`, it is blanked out of any error message as well.
    """
    try:
        proc = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={SOCKET}", "--user=root", "--batch",
             "--skip-column-names"],
            input=statements, capture_output=True, text=True, timeout=60, check=False, cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise DaemonError("the mariadb client got no answer in 60 s; "
                          f"read {layout.log_file('mariadbd')}") from None
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        if secret:
            err = err.replace(secret, "***")
        raise DaemonError(f"mariadb client failed (exit {proc.returncode}): {err}; "
                          f"read {layout.log_file('mariadbd')}")
    return proc.stdout


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain SQL name: {name!r}")
    return name


def ensure_database(database: str, user: str, password: str) -> None:
    """The database, and a local user owning it with this password (set on every call,
    so a new password file takes effect)."""
    if "'" in password or "\\" in password:
        raise ValueError("the password must not contain quotes or backslashes")
    db, who = _ident(database), _ident(user)
    sql(f"CREATE DATABASE IF NOT EXISTS `{db}`;\n"
        f"CREATE USER IF NOT EXISTS '{who}'@'localhost' IDENTIFIED BY '{password}';\n"
        f"ALTER USER '{who}'@'localhost' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{who}'@'localhost';\n", secret=password)
