"""The connector's side of the relay: a `Backend` whose every operation is a request to the
relay (docs/relay.md), so a pod holds no SSH client and no connection to the HPC side.

- `RelayBackend`: the profile the pod mounted goes to the relay once (a session); the job is
  registered (submitted, found, or re-attached with the relay's claim after a relay restart);
  `progress` is a long poll answered when the job has news; `status` is the session's latest,
  from its one listing per period. Plain `http.client` over TLS: no `requests`, no threads
  but one for the long poll (so SIGTERM is not kept waiting by it).
- `FallbackBackend` (`relay: preferred`): the relay while it answers, the profile's own
  backend when it does not, the relay again when it is back. The job id and handle are the
  same either way, so a switch is safe.
- `choose_backend`: what the profile (`relay: required | preferred | off`) and the pod
  (the relay URL and CA the webhook passed) ask for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from connector import errors
from connector.backends.base import Backend, Capability, FileStore, JobHandle, JobRequest, JobStatus, Progress
from connector.errors import BackendError, ConnectorError, ProfileError, TransientError
from connector.profile import Profile
from connector.spec import JobSpec
from connector.transport.base import READ_LIMIT

if TYPE_CHECKING:
    import http.client

log = logging.getLogger("hpc-connector")
T = TypeVar("T")

URL_ENV = "HPC_OFFLOAD_RELAY_URL"
CA_ENV = "HPC_OFFLOAD_RELAY_CA"  # the relay's CA, PEM text (the webhook sets it)
CA_FILE_ENV = "HPC_OFFLOAD_RELAY_CA_FILE"
TOKEN_FILE_ENV = "HPC_OFFLOAD_RELAY_TOKEN_FILE"  # noqa: S105 - a variable name
TOKEN_FILE = "/var/run/hpc-offload/relay/token"  # noqa: S105 - the projected token the webhook mounts
MODES = ("required", "preferred", "off")
RETRY_RELAY = 30.0  # seconds on the direct path before the relay is tried again
CLAIMS = "relay-claims.json"
FRESH = 1.0  # a status the last long poll brought is used for this long without asking
PROFILE_CHECK = 10.0  # seconds between checks that the mounted profile did not change


class RelayUnavailable(TransientError):
    """The relay cannot be reached, or is overloaded: `preferred` goes direct."""

    reason = "RelayUnavailable"


class RelayRefused(RelayUnavailable):
    """The relay refused this pod (no valid token) or the profile's host (allow-list)."""

    reason = "RelayRefused"


class _NoSession(Exception):
    pass


class _NoJob(Exception):
    pass


class RelayClient:
    """JSON requests to the relay over TLS; one keep-alive connection per thread."""

    def __init__(self, url: str, ca_pem: str | None, ca_file: str | None, token_file: str) -> None:
        import ssl  # only in relay mode: the direct path never loads TLS here

        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ProfileError(f"relay URL {url!r} is not https://HOST[:PORT]")
        self.host, self.port = parts.hostname, parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.url = url.rstrip("/")
        self.context = ssl.create_default_context()
        if ca_pem or ca_file:
            self.context = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
        self.token_file = Path(token_file)
        self._local = threading.local()
        self.requests = 0

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        import http.client

        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _token(self) -> str:
        try:
            return self.token_file.read_text().strip()  # re-read: the kubelet rotates it
        except OSError:
            raise RelayRefused(f"no relay token at {self.token_file} (the webhook mounts it)") from None

    def post(self, path: str, body: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        import http.client

        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token()}"}
        for attempt in (1, 2):  # a kept-alive connection the relay closed: once more, fresh
            self.requests += 1
            conn = self._connection(timeout)
            reused = conn.sock is not None
            try:
                conn.request("POST", self.prefix + path, data, headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if attempt == 1 and reused and not isinstance(exc, TimeoutError):
                    continue
                raise RelayUnavailable(f"relay {self.host}:{self.port} unreachable: "
                                       f"{exc.__class__.__name__}: {exc}") from None
            return _answer(response.status, raw)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()


def _answer(status: int, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status in (200, 202):
        return body
    kind, message = str(body.get("error", "")), str(body.get("message", f"HTTP {status}"))
    if status == 404 and kind == "no-session":
        raise _NoSession(message)
    if status == 404 and kind == "no-job":
        raise _NoJob(message)
    if status == 401 or kind == "host-refused":
        raise RelayRefused(f"relay refused: {message}")
    if status == 403:
        raise BackendError(f"relay refused: {message}")
    if status in (422, 502):
        cls = getattr(errors, kind, None)
        if isinstance(cls, type) and issubclass(cls, ConnectorError):
            raise cls(message)
        raise BackendError(message)
    raise RelayUnavailable(f"relay answered HTTP {status}: {message}")


def _b64(text: Any) -> bytes:
    import base64

    return base64.b64decode(text) if isinstance(text, str) and text else b""


class _Poller:
    """One thread for the long polls, so the caller waits on an event a signal can cut."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def run(self, action: Callable[[], T], interrupted: threading.Event) -> T | None:
        """The action's result, or None when `interrupted` is set first."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="relay-poll", daemon=True)
            self._thread.start()
        done = threading.Event()
        box: dict[str, Any] = {}
        self._jobs.put((action, box, done))
        while not done.wait(0.2):
            if interrupted.is_set():
                return None
        if "error" in box:
            raise box["error"]
        return box.get("value")  # type: ignore[no-any-return]

    def _loop(self) -> None:
        while True:
            action, box, done = self._jobs.get()
            try:
                box["value"] = action()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                box["error"] = exc
            done.set()


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """A malformed answer or a bug ends as RelayUnavailable (retried, or the direct path),
    never as a traceback in the pod log."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConnectorError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as the relay's fault
            raise RelayUnavailable(f"relay: unexpected {type(exc).__name__}: {str(exc)[:200]}") from None

    return wrapper  # type: ignore[return-value]


class RelayBackend(Backend):
    """The profile's backend, reached through the relay."""

    def __init__(self, profile: Profile, runtime_dir: str | None, client: RelayClient,
                 inner: type[Backend], period: float | None = None) -> None:
        super().__init__(profile, runtime_dir)
        self.client = client
        self.inner = inner
        self.type_name = inner.type_name  # type: ignore[misc]  # the state file names the manager
        self.capabilities = inner.capabilities_for(profile) & ~Capability.FILES  # type: ignore[misc]
        self.period = period
        self._sid: str | None = None
        self._fingerprint: str | None = None  # of the profile the session was opened with
        self._leaving: set[str] = set()  # sessions of an older profile still holding our job
        self._handed: set[str] = set()  # the lean follower's session, to compare with ours
        self._checked = time.monotonic()
        self._workdir: str | None = None
        self._handles: dict[str, JobHandle] = {}  # by key: the job, or a whole pod's part of it
        self._keys: dict[str, str] = {}  # job id -> the key this connector follows it by
        self._status: dict[str, tuple[JobStatus, float, int]] = {}  # status, when, version
        self._fault: str | None = None
        self._cancelling: set[str] = set()
        self._interrupted = threading.Event()
        self._poller = _Poller()
        self._watching = False
        self._claims_path = Path(runtime_dir) / CLAIMS if runtime_dir else None
        self._claims: dict[str, str] = self._load_claims()

    # --- session and registration -----------------------------------------------------------

    def _files(self) -> dict[str, bytes]:
        directory = self.profile.secret_dir
        if directory is None:
            raise ProfileError("the relay needs a profile directory (a mounted profile)")
        from relay.protocol import profile_files

        try:
            return profile_files(directory)
        except (OSError, ValueError) as exc:
            raise ProfileError(f"profile {directory}: {exc}") from None

    def _open(self) -> str:
        from relay.protocol import b64, fingerprint

        files = self._files()
        answer = self.client.post("/v1/session", {"name": self.profile.name,
                                                  "files": {k: b64(v) for k, v in files.items()}})
        self._sid = str(answer["session"])
        self._fingerprint = fingerprint(files)
        from connector.follower import COUNT_ENV

        resumed = bool(os.environ.get(COUNT_ENV))  # again, after the lean follower
        (log.debug if resumed else log.info)("following HPC jobs through the relay (%s:%d, session %s)",
                                             self.client.host, self.client.port, self._sid[:8])
        return self._sid

    def _post(self, path: str, body: Mapping[str, Any], timeout: float = 120.0,
              job_id: str | None = None) -> dict[str, Any]:
        """A session request; a relay that forgot the session or the job (a restart) gets
        them again, and the request is repeated once."""
        for attempt in (1, 2, 3):
            sid = self._sid or self._open()
            url = f"/v1/session/{sid}{path}" if job_id is None else f"/v1/session/{sid}/job/{job_id}{path}"
            try:
                return self.client.post(url, body, timeout)
            except _NoSession:
                self._sid = None
                if attempt == 3:
                    raise RelayUnavailable("the relay keeps forgetting the session") from None
            except _NoJob:
                if job_id is None or attempt == 3:
                    raise RelayUnavailable("the relay does not follow the job") from None
                self._attach(job_id)
        raise AssertionError("unreachable")

    def _attach(self, key: str) -> None:
        """(Re-)register the handle followed by `key` (the job id, or job id~part)."""
        handle = self._handles.get(key)
        if handle is None and self.runtime_dir:  # a restart that asks for a status first
            from connector.state import StateStore

            record = StateStore(self.runtime_dir).load()
            handle = record.handle if record is not None and record.handle.key == key else None
        if handle is None:
            raise BackendError(f"HPC job {key}: no handle to register with the relay")
        log.info("registering HPC job %s with the relay again", handle.job_id)
        answer = self._post("/attach", {"handle": _wire_handle(handle), "claim": self._claims.get(handle.job_id),
                                        "period": self.period})
        self._remember(handle.job_id, answer.get("claim"))

    def _registered(self, answer: dict[str, Any]) -> JobHandle | None:
        from relay.protocol import handle_from_wire

        if answer.get("handle") is None:
            return None
        handle = handle_from_wire(answer["handle"])
        self._handles[handle.key] = handle
        self._keys[handle.job_id] = handle.key
        self._remember(handle.job_id, answer.get("claim"))
        return handle

    def _load_claims(self) -> dict[str, str]:
        if self._claims_path is None or not self._claims_path.exists():
            return {}
        try:
            data = json.loads(self._claims_path.read_text())
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _remember(self, job_id: str, claim: Any) -> None:
        if not isinstance(claim, str) or self._claims.get(job_id) == claim:
            return
        self._claims[job_id] = claim
        if self._claims_path is not None:
            tmp = self._claims_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._claims))
            os.replace(tmp, self._claims_path)

    def _follow_profile(self) -> None:
        """A rotated Secret (the kubelet updates the mounted files): the job moves to a session
        opened with the new profile, so a revoked old key cannot strand it. The old session
        is told to forget the job (else it would cancel it as an orphan); until it is, the
        move is retried at each call."""
        now = time.monotonic()
        if self._sid is not None and now - self._checked >= PROFILE_CHECK:
            self._checked = now
            from relay.protocol import fingerprint

            try:
                changed = fingerprint(self._files()) != self._fingerprint
            except ProfileError:
                changed = False  # mid-update: the next check sees the whole new profile
            if changed:
                log.info("the profile changed (a rotated Secret?): reconnected to the HPC side through a "
                         "new relay session with it")
                self._leaving.add(self._sid)
                self._sid = None
        for old in list(self._leaving):
            if old in self._handed:  # from the lean follower: a move only if the session differs
                self._handed.discard(old)
                if (self._sid or self._open()) == old:
                    self._leaving.discard(old)
                    continue
                log.info("the profile changed (a rotated Secret?): reconnected to the HPC side through a "
                         "new relay session with it")
            for key in list(self._handles):  # the job id, or job id~part (a whole pod's container)
                self._attach(key)  # on the new session (opened first)
                with contextlib.suppress(_NoSession, _NoJob):
                    self.client.post(f"/v1/session/{old}/job/{key}/release", {"cleanup": False}, 30.0)
            self._leaving.discard(old)

    def move_from_session(self, sid: str) -> None:
        """The lean follower followed the job in session `sid`: if the profile changed since
        (this connector's session is another), the next call moves the job to this one and
        the old session forgets it (else it would cancel it as an orphan)."""
        self._handed.add(sid)
        self._leaving.add(sid)

    def adopt(self, handle: JobHandle) -> None:
        """A job this connector followed before (its state file): registered on first use."""
        self._handles.setdefault(handle.key, handle)
        self._keys.setdefault(handle.job_id, handle.key)

    def _key(self, job_id: str) -> str:
        """The relay follows each part of a whole pod's job on its own: this connector's."""
        return self._keys.get(job_id, job_id)

    # --- the contract -----------------------------------------------------------------------

    @_guarded
    def workdir(self) -> str:
        configured = str(self.profile.setting("workdir", "hpc-offload"))
        if configured.startswith("/"):
            return configured.rstrip("/")
        if self._workdir is None:
            self._workdir = str(self._post("/workdir", {})["workdir"])
        return self._workdir

    def render(self, request: JobRequest) -> str:
        return self.inner(self.profile, self.runtime_dir).render(request)

    @_guarded
    def find(self, request: JobRequest) -> JobHandle | None:
        from relay.protocol import request_to_wire

        return self._registered(self._post("/find", {"request": request_to_wire(request), "period": self.period}))

    @_guarded
    def submit(self, request: JobRequest) -> JobHandle:
        from relay.protocol import request_to_wire

        handle = self._registered(self._post("/submit", {"request": request_to_wire(request),
                                                         "period": self.period}, timeout=300.0))
        if handle is None:
            raise BackendError("the relay answered a submission without a job")
        return handle

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {job_id: self.status(job_id) for job_id in job_ids}

    @_guarded
    def status(self, job_id: str) -> JobStatus:
        self._follow_profile()
        cached = self._status.get(job_id)
        if cached is not None and time.monotonic() - cached[1] < FRESH and job_id not in self._cancelling:
            if self._fault:
                raise TransientError(self._fault)
            return cached[0]
        version = cached[2] if cached else 0
        body = {"version": version, "until_ended": job_id in self._cancelling}
        answer = self._post("/status", body, timeout=60.0, job_id=self._key(job_id))
        status = self._take(job_id, answer)
        if status is None:
            raise TransientError("the relay has no status for the job yet")
        if self._fault:
            raise TransientError(self._fault)
        return status

    def _take(self, job_id: str, answer: Mapping[str, Any]) -> JobStatus | None:
        from relay.protocol import status_from_wire

        self._fault = answer.get("fault") if isinstance(answer.get("fault"), str) else None
        if not answer.get("status"):
            return None
        status = status_from_wire(answer["status"])
        version = answer["version"] if isinstance(answer.get("version"), int) else 0
        self._status[job_id] = (status, time.monotonic(), version)
        return status

    @_guarded
    def cancel_many(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self._post("/cancel", {}, timeout=30.0, job_id=self._key(job_id))
            self._cancelling.add(job_id)

    @_guarded
    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        from relay.protocol import progress_from_wire

        self.adopt(handle)
        self._watch_signals()
        if self._interrupted.is_set():
            return Progress()
        self._follow_profile()
        cached = self._status.get(handle.job_id)
        body = {"stdout_offset": stdout_offset, "stderr_offset": stderr_offset, "marker": marker,
                "version": cached[2] if cached else 0}
        answer = self._poller.run(lambda: self._post("/wait", body, timeout=90.0, job_id=handle.key),
                                  self._interrupted)
        if answer is None:  # a signal: the life cycle cancels now
            return Progress()
        self._take(handle.job_id, answer)
        return progress_from_wire(answer.get("progress") or {})

    @_guarded
    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        self.adopt(handle)
        answer = self._post("/read", {"stream": stream, "offset": offset, "limit": limit}, job_id=handle.key)
        return _b64(answer.get("data"))

    def files(self) -> FileStore:
        raise BackendError("staging goes through the direct path, not the relay")

    @_guarded
    def cleanup(self, handle: JobHandle) -> None:
        self.adopt(handle)
        self._post("/release", {}, timeout=60.0, job_id=handle.key)

    def lean_plan(self, handle: JobHandle) -> dict[str, Any] | None:
        """What the lean follower (connector/follower.py) needs to go on with this job: only
        while the session is settled (no rotation under way, no fault, no cancel)."""
        cached = self._status.get(handle.job_id)
        if (self._sid is None or self._leaving or self._fault or self._cancelling or cached is None
                or self._keys.get(handle.job_id) != handle.key):
            return None
        return {"url": self.client.url, "session": self._sid, "key": handle.key, "version": cached[2],
                "profile": str(self.profile.secret_dir or ""), "fingerprint": self._fingerprint or ""}

    def stats(self) -> dict[str, int]:
        return {"relay_requests": self.client.requests}

    def close(self) -> None:
        self.client.close()

    # --- signals ----------------------------------------------------------------------------

    def _watch_signals(self) -> None:
        """Chain the life cycle's SIGINT/SIGTERM handlers so a long poll ends at once."""
        if self._watching or threading.current_thread() is not threading.main_thread():
            return
        self._watching = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)

            def handler(number: int, frame: Any, previous: Any = previous) -> None:
                self._interrupted.set()
                if callable(previous):
                    previous(number, frame)
                elif previous == signal.SIG_DFL:
                    signal.signal(number, signal.SIG_DFL)
                    os.kill(os.getpid(), number)

            signal.signal(signum, handler)


def _wire_handle(handle: JobHandle) -> dict[str, Any]:
    from relay.protocol import handle_to_wire

    return handle_to_wire(handle)


class FallbackBackend(Backend):
    """`relay: preferred`: the relay while it answers, the direct path while it does not."""

    def __init__(self, relay: RelayBackend, direct: Callable[[], Backend]) -> None:
        super().__init__(relay.profile, relay.runtime_dir)
        self.relay = relay
        self._make_direct = direct
        self._direct: Backend | None = None
        self.type_name = relay.type_name  # type: ignore[misc]
        self.capabilities = relay.capabilities  # type: ignore[misc]
        self._on_relay = True
        self._retry_at = 0.0

    def direct(self) -> Backend:
        if self._direct is None:
            self._direct = self._make_direct()
        return self._direct

    def _use(self, name: str, *args: Any, fall_back: bool = True) -> Any:
        now = time.monotonic()
        if self._on_relay or now >= self._retry_at:
            try:
                value = getattr(self.relay, name)(*args)
            except RelayUnavailable as exc:
                if self._on_relay:
                    log.warning("%s; following the job directly until the relay answers again", exc.message)
                self._on_relay = False
                self._retry_at = now + RETRY_RELAY
                if not fall_back:
                    raise
            else:
                if not self._on_relay:
                    log.info("the relay answers again: following the job through it")
                    self._on_relay = True
                    if self._direct is not None:
                        self._direct.close()
                        self._direct = None
                return value
        return getattr(self.direct(), name)(*args)

    def workdir(self) -> str:
        return self._use("workdir")  # type: ignore[no-any-return]

    def render(self, request: JobRequest) -> str:
        return self.relay.render(request)

    def find(self, request: JobRequest) -> JobHandle | None:
        return self._use("find", request)  # type: ignore[no-any-return]

    def submit(self, request: JobRequest) -> JobHandle:
        # A relay lost mid-submission may have submitted: no second submission here; the life
        # cycle retries, and its `find` (direct, by the tag) sees the first one.
        handle: JobHandle = self._use("submit", request, fall_back=False)
        return handle

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return self._use("statuses", job_ids)  # type: ignore[no-any-return]

    def status(self, job_id: str) -> JobStatus:
        return self._use("status", job_id)  # type: ignore[no-any-return]

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        self._use("cancel_many", job_ids)

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        self.relay.adopt(handle)
        return self._use("progress", handle, stdout_offset, stderr_offset, marker)  # type: ignore[no-any-return]

    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        return self._use("read_output", handle, stream, offset, limit)  # type: ignore[no-any-return]

    def files(self) -> FileStore:
        return self.direct().files()

    def cleanup(self, handle: JobHandle) -> None:
        self._use("cleanup", handle)

    def where(self, handle: JobHandle) -> str:
        return self.relay.where(handle)

    def lean_plan(self, handle: JobHandle) -> dict[str, Any] | None:
        return self.relay.lean_plan(handle) if self._on_relay else None

    def move_from_session(self, sid: str) -> None:
        self.relay.move_from_session(sid)

    def stats(self) -> dict[str, int]:
        direct = self._direct.stats() if self._direct is not None else {}
        return {**self.relay.stats(), **{f"direct_{k}": v for k, v in direct.items()}}

    def close(self) -> None:
        self.relay.close()
        if self._direct is not None:
            self._direct.close()


def relay_mode(profile: Profile) -> str:
    mode = str(profile.setting("relay", "preferred")).strip().lower()
    if mode not in MODES:
        raise ProfileError(f"profile {profile.name!r}: relay {mode!r} is not one of {', '.join(MODES)}")
    return mode


def choose_backend(profile: Profile, runtime_dir: str | None, spec: JobSpec,
                   environ: Mapping[str, str] | None = None) -> Backend:
    """The backend a connector follows its job with: direct, through the relay, or the relay
    with the direct path as fallback (docs/relay.md)."""
    from connector.backends import backend_class

    env = os.environ if environ is None else environ
    inner = backend_class(profile.backend)
    mode = relay_mode(profile)
    url = env.get(URL_ENV, "")

    def direct() -> Backend:
        return inner(profile, runtime_dir=runtime_dir)

    if mode == "off":
        return direct()
    if not url:
        if mode == "required":
            raise ProfileError(f"profile {profile.name!r} says relay: required, but no relay is installed "
                               "(the webhook gave the connector no relay URL)")
        return direct()
    if spec.stage_in or spec.stage_out:
        if mode == "required":
            raise ProfileError("stage-in/stage-out copy files over the direct path, and this profile says "
                               "relay: required; use relay: preferred (or off) for staged jobs")
        log.info("stage-in/stage-out: following the job directly (the relay does not copy files)")
        return direct()
    if profile.secret_dir is None:
        return direct()
    try:
        import relay.protocol as _wire  # noqa: F401 - the wire format ships in the same image
    except ImportError:
        if mode == "required":
            raise ProfileError("relay: required, but this connector image has no relay client") from None
        log.warning("this connector image has no relay client: following the job directly")
        return direct()
    client = RelayClient(url, env.get(CA_ENV) or None, env.get(CA_FILE_ENV) or None,
                         env.get(TOKEN_FILE_ENV) or TOKEN_FILE)
    period = spec.poll_interval or profile.monitoring_period
    relay = RelayBackend(profile, runtime_dir, client, inner, period)
    if mode == "required":
        return relay
    return FallbackBackend(relay, direct)


__all__ = ["FallbackBackend", "RelayBackend", "RelayUnavailable", "choose_backend"]
