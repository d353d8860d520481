"""The relay's HTTPS API (aiohttp): connectors open a session with the profile they mounted,
register their job (submit, find, or re-attach after a relay restart), long-poll its output
and state, and cancel it. Every `/v1` request carries the pod's projected token; the pod it
names (TokenReview) is the only identity the relay believes.

Routes (JSON bodies; relay.protocol has the shapes):
  POST /v1/session                        {"name", "files": {key: base64}} -> {"session", ...}
  POST /v1/session/{sid}/workdir          -> {"workdir"}
  POST /v1/session/{sid}/find|submit      {"request", "period"} -> {"handle", "claim"}
  POST /v1/session/{sid}/attach           {"handle", "claim", "period"} -> {"claim"}
  POST /v1/session/{sid}/job/{id}/wait    {"stdout_offset", "stderr_offset", "marker", "version"}
  POST /v1/session/{sid}/job/{id}/status  {"version", "until_ended"}
  POST /v1/session/{sid}/job/{id}/read    {"stream", "offset", "limit"} -> {"data"}
  POST /v1/session/{sid}/job/{id}/cancel | release
  POST /v1/deleted                        {"pods": [{"namespace", "uid"}]} -> {"cancelled"}
                                          (the webhook's delete notices; only its account)
  GET  /healthz /readyz /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from connector.backends.base import JobHandle, JobRequest, Progress
from connector.errors import ConnectorError, ProfileError
from connector.spec import JobSpec, PodRef, SpecError
from connector.transport.base import READ_LIMIT
from relay import protocol as wire
from relay.auth import Authenticator, Identity, Refused, ReviewUnavailable
from relay.registry import Full, HostRefused, Registry
from relay.session import RelayJob, Session

log = logging.getLogger("hpc-offload.relay")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IDENTITY = "hpc-offload.identity"  # the request key of the verified caller
RELAY: web.AppKey[Relay] = web.AppKey("relay")
MAX_BODY = 12 * 1024 * 1024


@dataclass
class Relay:
    registry: Registry
    auth: Authenticator
    claim_key: bytes
    wait_seconds: float = wire.WAIT_SECONDS
    max_jobs: int = 20000
    ready: Callable[[], bool] = lambda: True
    # "namespace:serviceaccount" whose pods may say which offloaded pods were deleted (the
    # webhook's); None: nobody may
    deletes_from: str | None = None


class Answer(Exception):
    """An HTTP error answer with a JSON body (kind, message)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": kind, "message": message}, status=status)


def _peer(request: web.Request) -> str:
    return request.remote or "?"


# --- metrics ----------------------------------------------------------------------------------

METRICS = CollectorRegistry()
REQUESTS = Counter("hpc_offload_relay_requests", "Requests answered, by route and HTTP status.",
                   ["route", "code"], registry=METRICS)
REFUSALS = Counter("hpc_offload_relay_refusals", "Requests refused (401/403), by reason.", ["reason"],
                   registry=METRICS)


class SessionCollector:
    """Gauges and counters read from the sessions at scrape time."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Any:
        sessions = list(self.relay.registry.sessions.values())
        yield _gauge("hpc_offload_relay_sessions", "Open site sessions.", len(sessions))
        yield _gauge("hpc_offload_relay_jobs", "Jobs followed.", sum(len(s.jobs) for s in sessions))
        yield _gauge("hpc_offload_relay_waiting", "Long polls waiting.",
                     sum(1 for s in sessions for j in list(s.jobs.values()) if j.waiter is not None))
        totals: dict[str, int] = {}
        for session in sessions:
            for name, value in {**session.counters, **session.backend.stats()}.items():
                totals[name] = totals.get(name, 0) + value
        for name, value in sorted(totals.items()):
            yield _gauge(f"hpc_offload_relay_{name}", f"Sum over open sessions of {name}.", value)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_)
    family.add_metric([], value)
    return family


# --- middleware -------------------------------------------------------------------------------

@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Identity for /v1 (401 otherwise, logged without the token), errors as JSON, metrics."""
    route = request.match_info.route.name or "other"
    response: web.StreamResponse
    if request.path.startswith(wire.API + "/"):
        relay = request.app[RELAY]
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        try:
            request[IDENTITY] = await relay.auth.identify(token)
        except Refused as exc:
            log.warning("refused %s %s from %s: %s", request.method, request.path, _peer(request), exc)
            REFUSALS.labels("token").inc()
            REQUESTS.labels(route, "401").inc()
            return _error(401, wire.UNAUTHENTICATED, f"not authenticated: {exc}")
        except ReviewUnavailable as exc:
            log.warning("cannot review a token for %s: %s", request.path, exc)
            REQUESTS.labels(route, "503").inc()
            return _error(503, wire.OVERLOADED, str(exc))
    try:
        response = await handler(request)
    except Answer as exc:
        if exc.status == 403:
            who = request.get(IDENTITY)
            log.warning("refused %s %s for pod %s: %s", request.method, request.path, who, exc.message)
            REFUSALS.labels(exc.kind).inc()
        response = _error(exc.status, exc.kind, exc.message)
    except ConnectorError as exc:
        status = 422 if isinstance(exc, ProfileError) else 502
        response = _error(status, type(exc).__name__, exc.message)
    REQUESTS.labels(route, str(response.status)).inc()
    return response


# --- helpers ----------------------------------------------------------------------------------

async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Answer(400, wire.BAD_REQUEST, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Answer(400, wire.BAD_REQUEST, "the body must be a JSON object")
    return body


def _session(request: web.Request) -> Session:
    session = request.app[RELAY].registry.get(request.match_info["sid"], request[IDENTITY])
    if session is None:
        raise Answer(404, wire.NO_SESSION, "the relay has no such session (it restarted?): open it again")
    return session


def _job(request: web.Request, session: Session) -> RelayJob:
    job = session.job(request.match_info["job_id"])
    if job is None:
        raise Answer(404, wire.NO_JOB, "the relay does not follow this job (it restarted?): register it again")
    identity = request[IDENTITY]
    if job.owner.pod_uid != identity.pod_uid:
        raise Answer(403, wire.FORBIDDEN, f"HPC job {job.handle.job_id} belongs to another pod")
    return job


def _period(body: dict[str, Any]) -> float | None:
    value = body.get("period")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _own_request(body: dict[str, Any], identity: Identity) -> JobRequest:
    """The job request, held to the caller's own pod: its tag, hence its job, is the pod's."""
    try:
        request = wire.request_from_wire(body.get("request") or {})
    except (ValueError, SpecError) as exc:
        raise Answer(400, wire.BAD_REQUEST, f"bad job request: {exc}") from None
    pod = request.spec.pod
    if pod.uid != identity.pod_uid or pod.namespace != identity.namespace:
        raise Answer(403, wire.FORBIDDEN, "the job request names another pod")
    return request


def _check_capacity(relay: Relay) -> None:
    if relay.registry.job_count() >= relay.max_jobs:
        raise Answer(503, wire.OVERLOADED, f"the relay follows {relay.max_jobs} jobs (its maximum)")


def _registered(relay: Relay, session: Session, handle: JobHandle, identity: Identity,
                period: float | None, tag: str = "") -> dict[str, Any]:
    existing = session.job(handle.key)
    if existing is not None and existing.owner.pod_uid != identity.pod_uid:
        raise Answer(403, wire.FORBIDDEN, f"HPC job {handle.job_id} belongs to another pod")
    session.register(handle, identity, period, tag)
    return {"handle": wire.handle_to_wire(handle),
            "claim": wire.claim(relay.claim_key, identity.namespace, identity.pod_uid, handle.job_id)}


# --- routes -----------------------------------------------------------------------------------

async def open_session(request: web.Request) -> web.Response:
    body = await _body(request)
    name, files = body.get("name"), body.get("files")
    if not isinstance(name, str) or not isinstance(files, dict) or len(files) > wire.MAX_PROFILE_FILES:
        raise Answer(400, wire.BAD_REQUEST, "a session needs the profile's name and files")
    try:
        decoded = {str(key): wire.unb64(value) for key, value in files.items()}
    except ValueError:
        raise Answer(400, wire.BAD_REQUEST, "profile files must be base64") from None
    relay = request.app[RELAY]
    try:
        session = relay.registry.open(request[IDENTITY], name[:253], decoded)
    except HostRefused as exc:
        raise Answer(403, wire.HOST_REFUSED, str(exc)) from None
    except Full as exc:
        raise Answer(503, wire.OVERLOADED, str(exc)) from None
    backend = session.backend
    return web.json_response({"session": session.key, "type": backend.type_name,
                              "capabilities": backend.capabilities.value})


async def workdir(request: web.Request) -> web.Response:
    session = _session(request)
    value = await session.call(asyncio.get_running_loop(), session.backend.workdir)
    return web.json_response({"workdir": value})


async def find(request: web.Request) -> web.Response:
    session, body = _session(request), await _body(request)
    relay, identity = request.app[RELAY], request[IDENTITY]
    job_request = _own_request(body, identity)
    handle = await session.find(asyncio.get_running_loop(), job_request)
    if handle is None:
        return web.json_response({"handle": None})
    handle = handle.for_part(job_request.part)  # a whole pod's container follows its own part
    _check_capacity(relay)
    return web.json_response(_registered(relay, session, handle, identity, _period(body), job_request.tag))


async def submit(request: web.Request) -> web.Response:
    session, body = _session(request), await _body(request)
    relay, identity = request.app[RELAY], request[IDENTITY]
    job_request = _own_request(body, identity)
    _check_capacity(relay)

    def once() -> JobHandle:  # on the session thread: a retried submit finds the first
        known = session.submitted.get(job_request.tag)
        if known is not None:
            return known
        session.counters["submits"] += 1
        handle = session.backend.submit(job_request)
        session.submitted[job_request.tag] = handle
        return handle

    handle = (await session.call(asyncio.get_running_loop(), once)).for_part(job_request.part)
    return web.json_response(_registered(relay, session, handle, identity, _period(body), job_request.tag))


async def attach(request: web.Request) -> web.Response:
    """Re-register a job after a relay restart: the claim proves the pod registered it; without
    one (the relay's key changed) the job must carry the pod's tag (asked of the manager)."""
    session, body = _session(request), await _body(request)
    relay, identity = request.app[RELAY], request[IDENTITY]
    try:
        handle = wire.handle_from_wire(body.get("handle") or {})
    except ValueError as exc:
        raise Answer(400, wire.BAD_REQUEST, str(exc)) from None
    if not wire.claim_ok(relay.claim_key, identity.namespace, identity.pod_uid, handle.job_id, body.get("claim")):
        tag = os.path.basename(handle.job_dir.rstrip("/"))
        own = f"hpco-{identity.pod_uid}"
        run = tag[len(own) + 2:] if tag.startswith(own + "-r") else ""
        if tag != own and not run.isdigit():
            raise Answer(403, wire.FORBIDDEN, f"HPC job {handle.job_id} is not this pod's")
        probe = JobRequest(JobSpec(pod=PodRef(identity.namespace, identity.pod_name, identity.pod_uid)),
                           handle.job_dir, {}, int(run or 0))
        found = await session.call(asyncio.get_running_loop(), lambda: session.backend.find(probe))
        if found is None or found.job_id != handle.job_id:
            raise Answer(403, wire.FORBIDDEN, f"HPC job {handle.job_id} is not this pod's")
    _check_capacity(relay)
    answer = _registered(relay, session, handle, identity, _period(body))
    return web.json_response({"claim": answer["claim"]})


def _status_answer(progress: Progress | None, snapshot: dict[str, Any]) -> web.Response:
    status = snapshot.get("status")
    return web.json_response({
        "progress": wire.progress_to_wire(progress or Progress()),
        "status": wire.status_to_wire(status) if status is not None else None,
        "version": snapshot.get("version", 0),
        "fault": snapshot.get("fault"),
    })


async def _long_poll(session: Session, job: RelayJob, future: asyncio.Future[Any], seconds: float) -> Any:
    try:
        return await asyncio.wait_for(asyncio.shield(future), seconds)
    except TimeoutError:
        return None
    finally:
        session.drop_waiter(job, future)


def _offset(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Answer(400, wire.BAD_REQUEST, "offsets are whole numbers")
    return value


async def wait(request: web.Request) -> web.Response:
    session, body = _session(request), await _body(request)
    job = _job(request, session)
    relay = request.app[RELAY]
    version = body["version"] if isinstance(body.get("version"), int) else 0
    future = session.wait(job, asyncio.get_running_loop(), _offset(body.get("stdout_offset")),
                          _offset(body.get("stderr_offset")), bool(body.get("marker")), version)
    seconds = min(float(body.get("timeout", relay.wait_seconds)), relay.wait_seconds)
    result = await _long_poll(session, job, future, max(seconds, 0.0))
    if result is None:
        return _status_answer(None, session.snapshot(job))
    return _status_answer(result["progress"], result)


async def status(request: web.Request) -> web.Response:
    """The session's latest status of the job, at once; or, when the caller already has that
    one (`version`) and waits for an end (`until_ended`), when it changes."""
    session, body = _session(request), await _body(request)
    job = _job(request, session)
    relay = request.app[RELAY]
    version = body["version"] if isinstance(body.get("version"), int) else 0
    if job.status is None or (body.get("until_ended") and not job.ended and job.version <= version):
        future = session.wait(job, asyncio.get_running_loop(), None, None, False, max(version, job.version))
        await _long_poll(session, job, future, relay.wait_seconds)
    return _status_answer(None, session.snapshot(job))


async def read(request: web.Request) -> web.Response:
    session, body = _session(request), await _body(request)
    job = _job(request, session)
    stream = body.get("stream")
    path = job.handle.stdout if stream == "stdout" else job.handle.stderr if stream == "stderr" else None
    if stream not in ("stdout", "stderr"):
        raise Answer(400, wire.BAD_REQUEST, "stream is stdout or stderr")
    if path is None:
        return web.json_response({"data": ""})
    offset = _offset(body.get("offset")) or 0
    limit = min(_offset(body.get("limit")) or READ_LIMIT, READ_LIMIT)
    data = await session.read(job, asyncio.get_running_loop(), path, offset, limit)
    return web.json_response({"data": wire.b64(data)})


async def cancel(request: web.Request) -> web.Response:
    session = _session(request)
    session.cancel(_job(request, session))
    return web.json_response({}, status=202)


async def release(request: web.Request) -> web.Response:
    session = _session(request)
    job = _job(request, session)
    body = await _body(request) if request.can_read_body else {}
    if body.get("cleanup", True):  # False: the job moved to another session, it goes on
        with contextlib.suppress(ConnectorError):
            await session.call(asyncio.get_running_loop(), lambda: session.backend.cleanup(job.handle))
    session.release(job)
    return web.json_response({})


def _deleted_pods(body: dict[str, Any]) -> list[tuple[str, str]]:
    pods = body.get("pods")
    if not isinstance(pods, list) or len(pods) > wire.MAX_DELETED_PODS:
        raise Answer(400, wire.BAD_REQUEST, f"pods: a list of at most {wire.MAX_DELETED_PODS}")
    out = []
    for pod in pods:
        namespace, uid = (pod.get("namespace"), pod.get("uid")) if isinstance(pod, dict) else (None, None)
        if not isinstance(namespace, str) or not isinstance(uid, str) or not namespace or not uid:
            raise Answer(400, wire.BAD_REQUEST, "each pod needs its namespace and uid")
        out.append((namespace[:253], uid[:64]))
    return out


async def deleted(request: web.Request) -> web.Response:
    """The webhook saw these offloaded pods deleted: cancel their jobs now, at the next tick,
    rather than when the kubelet gets round to stopping each connector (100 pods: 30-40 s on
    a busy node). The connector's own cancel still follows and finds the job cancelled."""
    relay, identity = request.app[RELAY], request[IDENTITY]
    if relay.deletes_from is None or f"{identity.namespace}:{identity.service_account}" != relay.deletes_from:
        raise Answer(403, wire.FORBIDDEN, "only the webhook's ServiceAccount may report deleted pods")
    cancelled = []
    for namespace, uid in _deleted_pods(await _body(request)):
        for session, job in relay.registry.jobs_of_pod(namespace, uid):
            if not job.ended:
                session.cancel(job)
                cancelled.append(job.handle.job_id)
    if cancelled:
        log.info("deleted pods: cancelling %d job(s): %s", len(cancelled), " ".join(cancelled[:20]))
    return web.json_response({"cancelled": len(cancelled)})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    if not relay.ready():
        return web.Response(status=503, text="no serving certificate\n")
    if relay.registry.job_count() >= relay.max_jobs:
        return web.Response(status=503, text="full\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(METRICS), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _reaper(app: web.Application) -> Any:
    relay = app[RELAY]

    async def loop() -> None:
        while True:
            await asyncio.sleep(30)
            relay.registry.reap()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    relay.registry.close()
    close = getattr(relay.auth, "close", None)
    if close is not None:
        await close()


def make_app(relay: Relay) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[RELAY] = relay
    METRICS.register(SessionCollector(relay))  # type: ignore[arg-type]
    base = wire.API + "/session"
    job = base + "/{sid}/job/{job_id}"
    app.router.add_post(base, open_session, name="session")
    app.router.add_post(base + "/{sid}/workdir", workdir, name="workdir")
    app.router.add_post(base + "/{sid}/find", find, name="find")
    app.router.add_post(base + "/{sid}/submit", submit, name="submit")
    app.router.add_post(base + "/{sid}/attach", attach, name="attach")
    app.router.add_post(job + "/wait", wait, name="wait")
    app.router.add_post(job + "/status", status, name="status")
    app.router.add_post(job + "/read", read, name="read")
    app.router.add_post(job + "/cancel", cancel, name="cancel")
    app.router.add_post(job + "/release", release, name="release")
    app.router.add_post(wire.API + "/deleted", deleted, name="deleted")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics, name="metrics")
    app.cleanup_ctx.append(_reaper)
    return app

