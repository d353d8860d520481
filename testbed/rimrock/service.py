"""Setting the server up in the testbed: its user, CA, SSH key, config, and daemon spec.

Files, under the testbed's state dir:
  rimrock/ca/          root only: the CA key, the test user's certificate and key (what
                       ~/.globus holds); proxies are minted from them on demand
  rimrock/ca.pem       the CA the server trusts
  rimrock/known_hosts  the login node's host key (the server checks it strictly)
  rimrock/server/      the server's own (user `rimrock`, 0700): its SSH key, the job database
  rimrock/config.json  paths and settings, no secret
The server's public key is authorized for the test user, so only the server logs in with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import pwd
import shutil
import socket
import sys
from pathlib import Path

from .. import layout, sshd, users
from ..daemons import Daemon, port_answers, run
from . import pki

log = logging.getLogger("testbed")

BASE = layout.STATE_DIR / "rimrock"
CA_DIR = BASE / "ca"
CA_FILE = BASE / "ca.pem"
KNOWN_HOSTS = BASE / "known_hosts"
SERVER_DIR = BASE / "server"
SERVER_KEY = SERVER_DIR / "id_ed25519"
DB = SERVER_DIR / "jobs.sqlite"
CONFIG = BASE / "config.json"


def login_host() -> str:
    """The `host` a submission names: this machine, the testbed's login node."""
    return socket.gethostname()


def url(host: str = layout.DEFAULT_ADDRESS) -> str:
    return f"http://{host}:{layout.RIMROCK_PORT}"


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.rename(path)


def _ensure_pki(login: str) -> str:
    """CA and user certificate (renewed 30 days before it ends); returns the user's DN."""
    CA_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(CA_DIR, 0o700)
    ca_cert, ca_key = CA_DIR / "ca.pem", CA_DIR / "ca.key"
    if not (ca_cert.exists() and ca_key.exists()):
        cert, key = pki.make_ca("hpc-offload testbed grid CA")
        _write(ca_key, pki.key_to_pem(key), 0o600)
        _write(ca_cert, pki.to_pem(cert), 0o644)
        log.info("rimrock: made the testbed grid CA")
    ca = pki.load_certificates(ca_cert.read_bytes())[0]
    user_cert, user_key = CA_DIR / f"user-{login}.pem", CA_DIR / f"user-{login}.key"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    if not (user_cert.exists() and user_key.exists()) or \
            pki.load_certificates(user_cert.read_bytes())[0].not_valid_after_utc < soon:
        cert, key = pki.make_user(ca, pki.load_key(ca_key.read_bytes()), login)
        _write(user_key, pki.key_to_pem(key), 0o600)
        _write(user_cert, pki.to_pem(cert), 0o644)
        log.info("rimrock: issued the grid certificate of %s", login)
    if not CA_FILE.exists() or CA_FILE.read_bytes() != ca_cert.read_bytes():
        _write(CA_FILE, ca_cert.read_bytes(), 0o644)
    return pki.globus_dn(pki.load_certificates(user_cert.read_bytes())[0].subject)


def _ensure_server_key(owner: pwd.struct_passwd) -> None:
    SERVER_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(SERVER_DIR, owner.pw_uid, owner.pw_gid)
    os.chmod(SERVER_DIR, 0o700)
    if not SERVER_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rimrock-testbed-server",
             "-f", str(SERVER_KEY)])
        log.info("rimrock: generated the server's SSH key")
    for path in (SERVER_KEY, Path(f"{SERVER_KEY}.pub")):
        shutil.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(SERVER_KEY, 0o600)
    sshd.authorize_key(Path(f"{SERVER_KEY}.pub").read_text().strip())


def render_config(addresses: tuple[str, ...], dn: str) -> str:
    aliases = sorted({login_host(), login_host().split(".")[0], "localhost", *addresses})
    return json.dumps({
        "db": str(DB), "ca_file": str(CA_FILE),
        "node": {"address": layout.DEFAULT_ADDRESS, "port": layout.SSH_PORT,
                 "known_hosts": str(KNOWN_HOSTS), "key_path": str(SERVER_KEY),
                 "aliases": aliases, "pool_size": 5, "timeout": 20},
        "mappings": {layout.TEST_USER: dn},
        "root_path": "/home/{login}/",
    }, indent=2, sort_keys=True) + "\n"


def prepare(addresses: tuple[str, ...]) -> str:
    """Everything the daemon needs (after sshd.prepare); returns the config text."""
    owner = users.ensure_system_user(layout.RIMROCK_USER)
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)  # noqa: S103 - the server (not root) reads the CA and config here
    dn = _ensure_pki(layout.TEST_USER)
    _ensure_server_key(owner)
    prefix = f"[{layout.DEFAULT_ADDRESS}]:{layout.SSH_PORT} "
    lines = "".join(f"{x}\n" for x in layout.KNOWN_HOSTS.read_text().splitlines()
                    if x.startswith(prefix))
    if not KNOWN_HOSTS.exists() or KNOWN_HOSTS.read_text() != lines:
        _write(KNOWN_HOSTS, lines.encode(), 0o644)
    config = render_config(addresses, dn)
    if not CONFIG.exists() or CONFIG.read_text() != config:
        _write(CONFIG, config.encode(), 0o644)
    return config


def python() -> str:
    """The interpreter of this installation (the venv's), spelled the same by every caller."""
    candidate = Path(sys.prefix) / "bin" / "python3"
    return str(candidate) if candidate.exists() else sys.executable


def _source_digest() -> str:
    """The server's code: a change restarts it on the next `up`, like a changed setting."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def daemon(addresses: tuple[str, ...]) -> Daemon:
    config = (CONFIG.read_text() if CONFIG.exists() else "") + _source_digest()
    return Daemon(
        name="rimrock",
        argv=(python(), "-m", "testbed.rimrock.serve", str(CONFIG), layout.RIMROCK_USER,
              *(f"{a}:{layout.RIMROCK_PORT}" for a in addresses)),
        env={"HOME": str(SERVER_DIR)},
        addresses=tuple(url(a) for a in addresses),
        config=config,
        ready=lambda: all(port_answers(a, layout.RIMROCK_PORT) for a in addresses),
    )


def proxy(login: str = layout.TEST_USER, lifetime: float = 12 * 3600) -> str:
    """A fresh proxy for the test user (PEM; a credential: never log it). Needs root."""
    cert = pki.load_certificates((CA_DIR / f"user-{login}.pem").read_bytes())[0]
    key = pki.load_key((CA_DIR / f"user-{login}.key").read_bytes())
    return pki.make_proxy(cert, key, lifetime)
