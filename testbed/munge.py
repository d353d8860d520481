"""munged, which SLURM authenticates every message with.

It runs as user `munge` (it refuses root's key ownership otherwise) on the default socket,
so SLURM's auth/munge finds it without configuration.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from . import layout
from .daemons import Daemon, run

KEY = Path("/etc/munge/munge.key")


def works() -> bool:
    """True if a credential round-trips through the socket."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=False)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                              timeout=5, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def prepare() -> None:
    """Key (0400, owned by munge) and the directories munged insists on owning."""
    munge = pwd.getpwnam("munge")
    if not KEY.exists():
        KEY.parent.mkdir(mode=0o700, exist_ok=True)
        run(["mungekey", "--create", "--keyfile", str(KEY)])
    for path, mode in ((KEY.parent, 0o700), (Path("/run/munge"), 0o755),
                       (Path("/var/lib/munge"), 0o700), (Path("/var/log/munge"), 0o700)):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, munge.pw_uid, munge.pw_gid)
        os.chmod(path, mode)
    shutil.chown(KEY, munge.pw_uid, munge.pw_gid)
    os.chmod(KEY, 0o400)


def daemon() -> Daemon:
    return Daemon(
        name="munged",
        # --force: take over the socket a killed munged left behind (half-started state)
        argv=("/usr/sbin/munged", "--foreground", "--force"),
        user="munge",
        addresses=(str(layout.MUNGE_SOCKET),),
        ready=works,
    )
