"""The unprivileged accounts the testbed needs: the HPC test user and slurmrestd's."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from pathlib import Path

from . import layout
from .daemons import run

log = logging.getLogger("testbed")


def ensure_test_user() -> pwd.struct_passwd:
    """`hpcuser` with a home, a usable (non-password) login and the work dir."""
    try:
        entry = pwd.getpwnam(layout.TEST_USER)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/bash", layout.TEST_USER])
        entry = pwd.getpwnam(layout.TEST_USER)
        log.info("user %s: created (uid %d)", layout.TEST_USER, entry.pw_uid)
    # a locked password field ("!") makes sshd refuse even key logins without PAM
    if _shadow_password(layout.TEST_USER).startswith("!"):
        run(["usermod", "-p", "*", layout.TEST_USER])
        log.info("user %s: unlocked for key-only login", layout.TEST_USER)
    for path, mode in ((Path(entry.pw_dir), 0o755), (layout.WORKDIR, 0o755),
                       (Path(entry.pw_dir) / ".ssh", 0o700)):
        if not path.is_dir():
            path.mkdir(parents=True)
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(path, mode)
    return entry


def _shadow_password(user: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1:
            return fields[1]
    return ""


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """A no-login system account for a daemon that must not run as root."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name])
        log.info("user %s: created (system)", name)
        return pwd.getpwnam(name)
