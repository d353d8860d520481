"""Install the Debian packages the testbed needs, and only the missing ones.

`up` runs on every test session, so the common case (all installed) must cost one
`dpkg-query`, not an `apt-get` run that takes the dpkg lock other engineers may hold.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("testbed")

PACKAGES: tuple[str, ...] = (
    "slurm-wlm",
    "munge",
    "slurmrestd",
    "slurm-wlm-jwt-plugin",
    "slurmdbd",  # accounting, so `sacct` knows finished jobs
    "mariadb-server",  # slurmdbd's store
    "openssh-server",
    "charliecloud",
    "debootstrap",
    "gridengine-master",
    "gridengine-exec",
    "gridengine-client",
)
# debconf answers for gridengine's questions, so apt never prompts (owner question type value):
# let the packages write a default cell; the master's name goes to act_qmaster (sge.py rewrites
# it anyway). Services the packages try to start are refused by policy-rc.d or absent init.
PRESEED: tuple[str, ...] = (
    "gridengine-common shared/gridengineconfig boolean true",
    "gridengine-common shared/gridenginecell string default",
    "gridengine-common shared/gridenginemaster string {host}",
)
LISTS_DIR = Path("/var/lib/apt/lists")
LISTS_MAX_AGE = 24 * 3600  # older package lists may name .debs the mirror no longer has


class PackageError(RuntimeError):
    """apt-get failed; the message names the command and its log file."""


def missing(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Packages not fully installed, by dpkg's own status (no network)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    installed = {
        line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and
        line.split()[1].startswith("ii")
    }
    return [p for p in packages if p not in installed]


def _lists_fresh() -> bool:
    lists = list(LISTS_DIR.glob("*_Packages*"))
    if not lists:
        return False
    return time.time() - max(p.stat().st_mtime for p in lists) < LISTS_MAX_AGE


def _apt(args: list[str], logfile: Path) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # wait for a dpkg lock held by someone else instead of failing at once
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", *args]
    with open(logfile, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
    if rc != 0:
        raise PackageError(f"'apt-get {args[0]}' failed (exit {rc}); read {logfile}")


def _preseed(logfile: Path) -> None:
    """Answer the packages' debconf questions before apt asks them."""
    host = socket.gethostname().split(".")[0]
    text = "".join(line.format(host=host) + "\n" for line in PRESEED)
    with open(logfile, "a") as out:
        out.write(f"$ debconf-set-selections <<< {text!r}\n")
        out.flush()
        rc = subprocess.run(["debconf-set-selections"], input=text.encode(), stdout=out,
                            stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise PackageError(f"'debconf-set-selections' failed (exit {rc}); read {logfile}")


def ensure_packages(logfile: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Install what is missing; return the names installed (empty when nothing was)."""
    todo = missing(packages)
    if not todo:
        log.info("packages: all %d installed", len(packages))
        return []
    logfile.parent.mkdir(parents=True, exist_ok=True)
    if not _lists_fresh():
        log.info("packages: apt-get update (lists missing or older than a day)")
        _apt(["update"], logfile)
    _preseed(logfile)
    log.info("packages: installing %s", " ".join(todo))
    started = time.monotonic()
    _apt(["install", "-y", "--no-install-recommends", *todo], logfile)
    still = missing(packages)
    if still:
        raise PackageError(f"still not installed after apt-get: {' '.join(still)}; read {logfile}")
    log.info("packages: installed %d in %.0f s", len(todo), time.monotonic() - started)
    return todo
