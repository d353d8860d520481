"""An sshd of the testbed's own (port 2222), and the test user's keys.

It never touches the machine's /etc/ssh: own config, host key and pid file. Only `hpcuser`
may log in, with keys only. The client key stays in the state dir (root only); the profile
hands it to the connector as a Secret, with a known_hosts file so host keys are checked
strictly.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import shutil
from collections.abc import Iterable
from pathlib import Path

from . import layout
from .daemons import Daemon, port_answers, run

log = logging.getLogger("testbed")

CONFIG = layout.SSH_DIR / "sshd_config"
HOST_KEY = layout.SSH_DIR / "ssh_host_ed25519_key"


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
        log.info("sshd: generated %s", path)


def render_config(addresses: Iterable[str]) -> str:
    listen = "".join(f"ListenAddress {a}\n" for a in addresses)
    return f"""\
# Written by `hpc-offload testbed up`; rewritten on each run.
Port {layout.SSH_PORT}
{listen}HostKey {HOST_KEY}
PidFile {layout.RUN_DIR / 'sshd.pid'}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
AllowUsers {layout.TEST_USER}
StrictModes yes
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
"""


def prepare(addresses: tuple[str, ...]) -> str:
    """Keys, authorized_keys, known_hosts and config; return the config text."""
    layout.SSH_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.SSH_DIR, 0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    _keygen(HOST_KEY, "hpc-offload-testbed-host")
    _keygen(layout.CLIENT_KEY, f"{layout.TEST_USER}@hpc-offload-testbed")
    authorize_key(client_public_key())
    host_pub = Path(f"{HOST_KEY}.pub").read_text().split()
    lines = "".join(f"[{a}]:{layout.SSH_PORT} {host_pub[0]} {host_pub[1]}\n" for a in addresses)
    if not layout.KNOWN_HOSTS.exists() or layout.KNOWN_HOSTS.read_text() != lines:
        layout.KNOWN_HOSTS.write_text(lines)
        os.chmod(layout.KNOWN_HOSTS, 0o644)
    config = render_config(addresses)
    if not CONFIG.exists() or CONFIG.read_text() != config:
        CONFIG.write_text(config)
        run(["/usr/sbin/sshd", "-t", "-f", str(CONFIG)])
    return config


def client_public_key() -> str:
    return Path(f"{layout.CLIENT_KEY}.pub").read_text().strip()


def _authorized_keys() -> tuple[Path, pwd.struct_passwd]:
    user = pwd.getpwnam(layout.TEST_USER)
    return Path(user.pw_dir) / ".ssh" / "authorized_keys", user


def _edit_authorized_keys(line: str, add: bool) -> bool:
    """Add or remove one key line under a lock (tests may do this concurrently)."""
    line = line.strip()
    if not line or "\n" in line:
        raise ValueError("expected one public key line")
    key = tuple(line.split()[:2])  # type and base64 blob identify the key; comments differ
    path, user = _authorized_keys()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(path.parent, user.pw_uid, user.pw_gid)
    with open(path.parent / ".authorized_keys.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = path.read_text().splitlines() if path.exists() else []
        kept = [x for x in current if tuple(x.split()[:2]) != key]
        new = [*kept, line] if add else kept
        if new == current:
            return False
        tmp = path.with_name(".authorized_keys.tmp")
        tmp.write_text("".join(f"{x}\n" for x in new))
        shutil.chown(tmp, user.pw_uid, user.pw_gid)
        os.chmod(tmp, 0o600)
        tmp.rename(path)
    return True


def authorize_key(pubkey_line: str) -> bool:
    """Let this public key log in as the test user; False if it already could."""
    return _edit_authorized_keys(pubkey_line, add=True)


def revoke_key(pubkey_line: str) -> bool:
    """Remove this public key; False if it was not there. The testbed's own key stays."""
    if tuple(pubkey_line.split()[:2]) == tuple(client_public_key().split()[:2]):
        raise ValueError("refusing to revoke the testbed's own client key")
    return _edit_authorized_keys(pubkey_line, add=False)


def daemon(addresses: tuple[str, ...], config: str) -> Daemon:
    return Daemon(
        name="sshd",
        # -D: stay in the foreground (pid file = our child); -e: log to our log file
        argv=("/usr/sbin/sshd", "-D", "-e", "-f", str(CONFIG)),
        addresses=tuple(f"{a}:{layout.SSH_PORT}" for a in addresses),
        config=config,
        ready=lambda: all(port_answers(a, layout.SSH_PORT, b"SSH-") for a in addresses),
    )
