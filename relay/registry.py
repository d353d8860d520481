"""The relay's sessions, keyed by (verified namespace, profile name, fingerprint of every
profile file): no pod can reach another namespace's session, and a rotated Secret is a new
session while the old one follows its jobs to their end.

A session's profile is written 0600 into a private directory of the relay (a memory-backed
volume in the pod) as the connector sent it; the relay reads no Secret through the API. The
hosts a session may reach can be limited (`--allow-host`), so the relay is no open SSH client
for anyone with a pod.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from connector.backends import backend_class
from connector.errors import ProfileError, SpecError
from connector.profile import Profile, load_profile_dir
from connector.spec import parse_duration
from relay.auth import Identity
from relay.protocol import fingerprint
from relay.session import RelayJob, Session, Settings

log = logging.getLogger("hpc-offload.relay")

IDLE_SECONDS = 300.0  # a session with no job and no request this long is closed


class HostRefused(Exception):
    """The profile names a host outside the relay's allow-list (403)."""


class Full(Exception):
    """The relay takes no more sessions (503: the connector falls back or waits)."""


def profile_hosts(profile: Profile, access_local: bool) -> list[str]:
    """The hosts a session of this profile would connect to."""
    hosts = []
    if access_local:
        hosts.append("localhost")
    for key in ("host",):
        value = profile.setting(key)
        if isinstance(value, str) and value:
            hosts.append(value)
    endpoint = profile.setting("endpoint")
    if isinstance(endpoint, str) and endpoint:
        hosts.append(urlsplit(endpoint).hostname or endpoint)
    return hosts


class Registry:
    def __init__(self, settings: Settings, state_dir: str, allow_hosts: Sequence[str] = (),
                 max_sessions: int = 1000) -> None:
        self.settings = settings
        # a directory of our own inside the given one (in a pod: an emptyDir owned by root)
        self.state_dir = Path(state_dir) / "s"  # short: ssh control sockets live below it
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self.allow_hosts = [pattern.lower() for pattern in allow_hosts]
        self.max_sessions = max_sessions
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def key(self, identity: Identity, name: str, files: Mapping[str, bytes]) -> str:
        text = f"{identity.namespace}\0{name}\0{fingerprint(files)}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str, identity: Identity) -> Session | None:
        """The session, if it exists and belongs to the caller's namespace."""
        session = self.sessions.get(key)
        if session is None or session.namespace != identity.namespace:
            return None
        return session

    def open(self, identity: Identity, name: str, files: Mapping[str, bytes]) -> Session:
        key = self.key(identity, name, files)
        with self._lock:
            session = self.sessions.get(key)
            if session is not None:
                return session
            if len(self.sessions) >= self.max_sessions:
                raise Full(f"the relay holds {len(self.sessions)} sessions (its maximum)")
            session = self._create(key, identity, name, files)
            self.sessions[key] = session
        log.info("session %s opened for namespace %s, profile %s (%s)", key[:8], identity.namespace,
                 name, session.backend.type_name)
        return session

    def _create(self, key: str, identity: Identity, name: str, files: Mapping[str, bytes]) -> Session:
        directory = self.state_dir / key[:12]
        profile_dir = directory / "profile"
        shutil.rmtree(directory, ignore_errors=True)
        profile_dir.mkdir(parents=True, mode=0o700)
        for filename, data in files.items():
            if "/" in filename or filename.startswith(".") or not filename:
                raise ProfileError(f"profile file name {filename[:60]!r} is not a key name")
            fd = os.open(profile_dir / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        try:
            profile = load_profile_dir(profile_dir)
            profile = Profile(profile.backend, profile.configuration, profile.monitoring_period,
                              profile.secret_dir, name)
            cls = backend_class(profile.backend)
            access_local = getattr(cls, "access", "") == "local"
            self._check_hosts(profile, access_local)
            orphan = profile.setting("orphan_timeout")
            orphan_timeout = parse_duration(orphan, "orphan_timeout") if orphan not in (None, "") else None
            backend = cls(profile, runtime_dir=str(directory))
        except SpecError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise ProfileError(exc.message) from None
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return Session(key, identity.namespace, backend, self.settings, profile.monitoring_period,
                       orphan_timeout, lambda: self._forget(key, directory))

    def _check_hosts(self, profile: Profile, access_local: bool) -> None:
        if not self.allow_hosts:
            return
        for host in profile_hosts(profile, access_local):
            if not any(fnmatch.fnmatchcase(host.lower(), pattern) for pattern in self.allow_hosts):
                raise HostRefused(f"host {host!r} is not in the relay's allow-list")

    def _forget(self, key: str, directory: Path) -> None:
        with self._lock:
            self.sessions.pop(key, None)
        shutil.rmtree(directory, ignore_errors=True)

    def reap(self) -> None:
        """Close sessions idle for IDLE_SECONDS (their SSH connection ends with them)."""
        now = time.monotonic()
        for key, session in list(self.sessions.items()):
            if session.idle_for(now) > IDLE_SECONDS:
                log.info("session %s closed (idle)", key[:8])
                with self._lock:
                    self.sessions.pop(key, None)
                session.close()

    def close(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        for session in list(self.sessions.values()):
            session.thread.join(timeout=10)

    def jobs_of_pod(self, namespace: str, pod_uid: str) -> list[tuple[Session, RelayJob]]:
        """Every job the pod registered, in any of its namespace's sessions (a whole pod has
        one per part; a rotated Secret leaves some in the old session)."""
        found = []
        for session in list(self.sessions.values()):
            if session.namespace != namespace:
                continue
            with session.lock:
                jobs = [job for job in session.jobs.values() if job.owner.pod_uid == pod_uid]
            found += [(session, job) for job in jobs]
        return found

    def job_count(self) -> int:
        return sum(len(session.jobs) for session in self.sessions.values())
