"""slurmrestd's job API per OpenAPI version: the bodies the `slurm-rest` backend sends and how
it reads the answers. Pure functions, no I/O, so each version's quirks are unit-tested against
recorded bodies (tests/fixtures/slurmrestd/).

Two dialects exist. SLURM 20.11-23.02 (openapi v0.0.36-v0.0.39 plugins) take `environment` as
an object and plain integers; SLURM 23.11+ (data_parser v0.0.40 and later) take `environment`
as a list of "K=V", wrap numbers as {set, infinite, number}, report `job_state` as a list
(base state first, then flags) and `exit_code` as {status, return_code, signal}. slurmrestd
answers refusals with a SLURM `error_number` rather than a fitting HTTP status (an unknown job
is HTTP 500 in 22.05 and 404 from 23.11; a bad token is 500 with -1 or 5005): `classify`
turns each answer into what the caller must do.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Versions this module can talk, newest first. v0.0.38 is checked live against the testbed's
# SLURM 22.05; v0.0.40 (SLURM 23.11) and v0.0.41 (24.05) against their published descriptions.
SUPPORTED_VERSIONS = ("v0.0.41", "v0.0.40", "v0.0.38")
LEGACY_VERSIONS = frozenset({"v0.0.38"})

# SLURM error numbers (slurm/slurm_errno.h of 22.05, unchanged since) that the backend acts on.
SLURM_PROTOCOL_AUTHENTICATION_ERROR = 1007
ESLURM_ACCESS_DENIED = 2002
ESLURM_USER_ID_MISSING = 2010
ESLURM_INVALID_JOB_ID = 2017
ESLURM_TRANSITION_STATE_NO_UPDATE = 2020  # "try again later"
ESLURM_ALREADY_DONE = 2021  # "Job/step already completing or completed": nothing to cancel
ESLURM_IN_STANDBY_MODE = 2027
ESLURM_AUTH_CRED_INVALID = 6000  # 6000-6008: the credential itself

_AUTH_NUMBERS = frozenset({SLURM_PROTOCOL_AUTHENTICATION_ERROR, ESLURM_USER_ID_MISSING,
                           *range(ESLURM_AUTH_CRED_INVALID, ESLURM_AUTH_CRED_INVALID + 9)})
# lost or timed-out connections to slurmctld, a controller in standby, "try again later"
_TRANSIENT_NUMBERS = frozenset({*range(1001, 1005), *range(1800, 1803), *range(5000, 5006),
                                ESLURM_TRANSITION_STATE_NO_UPDATE, ESLURM_IN_STANDBY_MODE})

_VERSION_IN_PATH = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")
_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


class ApiVersionError(ValueError):
    """The server serves no version this client can talk, or not the one asked for."""


# --- version discovery -----------------------------------------------------------------------


def version_key(version: str) -> tuple[int, int, int]:
    match = _VERSION.match(version)
    if not match:
        raise ApiVersionError(f"{version!r} is not an API version like v0.0.38")
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro)


def served_versions(openapi_doc: Mapping[str, Any]) -> list[str]:
    """The `slurm` API versions an OpenAPI description (`GET /openapi/v3`) lists, newest first.

    Only the slurmctld paths count (`/slurm/vX/…`); `/slurmdb/…` is the accounting API."""
    paths = openapi_doc.get("paths")
    if not isinstance(paths, Mapping):
        return []
    found = {m.group(1) for p in paths if isinstance(p, str) and (m := _VERSION_IN_PATH.match(p))}
    valid = [v for v in found if _VERSION.match(v)]
    return sorted(valid, key=version_key, reverse=True)


def choose_version(served: Iterable[str], wanted: str | None = None) -> str:
    """The version to use: the profile's `api_version` if served, else the newest we support.

    Raises ApiVersionError naming what the server serves and what this client supports."""
    served_list = sorted(set(served), key=version_key, reverse=True)
    shown = ", ".join(served_list) or "none"
    supported = ", ".join(SUPPORTED_VERSIONS)
    if wanted:
        version_key(wanted)  # well-formed
        if wanted not in SUPPORTED_VERSIONS:
            raise ApiVersionError(f"api_version {wanted} is not supported by this connector (supported: {supported})")
        if served_list and wanted not in served_list:
            raise ApiVersionError(f"api_version {wanted} is not served by this slurmrestd (it serves: {shown})")
        return wanted
    for version in SUPPORTED_VERSIONS:
        if version in served_list:
            return version
    raise ApiVersionError(f"this slurmrestd serves {shown}; this connector supports {supported}")


def probe_order(wanted: str | None = None) -> tuple[str, ...]:
    """Versions to try with `GET /slurm/vX/ping/` when the server has no OpenAPI description."""
    return (wanted,) if wanted else SUPPORTED_VERSIONS


# --- paths -----------------------------------------------------------------------------------


def _slash(version: str) -> str:
    """v0.0.40+ list collections with a trailing slash in their description; v0.0.38 without."""
    return "" if _legacy(version) else "/"


def _legacy(version: str) -> bool:
    return version in LEGACY_VERSIONS or version_key(version) < (0, 0, 40)


def submit_path(version: str) -> str:
    return f"/slurm/{version}/job/submit"


def job_path(version: str, job_id: str) -> str:
    if not str(job_id).isdigit():
        raise ValueError(f"job id {job_id!r} is not a number")
    return f"/slurm/{version}/job/{job_id}"


def jobs_path(version: str) -> str:
    return f"/slurm/{version}/jobs{_slash(version)}"


def ping_path(version: str) -> str:
    return f"/slurm/{version}/ping{_slash(version)}"


def jobs_query(version: str, since: int | None) -> dict[str, str]:
    """`update_time` for `GET /jobs`: only from slurmctld's own `last_update` (v0.0.40+), never
    from this host's clock (a clock ahead of slurmctld's would hide changes). v0.0.38 reports no
    `last_update`, so it always gets the full list."""
    if since is None or _legacy(version):
        return {}
    return {"update_time": str(since)}


# --- submit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    """What the backend asks slurmrestd for, in SLURM's own terms (minutes, megabytes).

    slurmrestd reads no `#SBATCH` line of the script: everything the job asks for is here."""

    script: str
    name: str
    workdir: str
    stdout: str
    stderr: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    time_limit_minutes: int | None = None  # 0: no limit (SLURM's INFINITE)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    comment: str | None = None
    cpus_per_task: int | None = None
    memory_per_node_mb: int | None = None
    nodes: int | None = None
    tasks: int | None = None
    gpus: int | None = None  # per node, as `--gres=gpu:N`
    gpu_type: str | None = None
    constraints: str | None = None
    reservation: str | None = None
    requeue: bool | None = None
    nice: int | None = None
    append_output: bool = False  # a requeued job appends to its output instead of truncating it

INFINITE = 0xFFFFFFFF  # SLURM's "no limit" for a 32-bit field (v0.0.38 takes it as a number)


def _number(value: int) -> dict[str, Any]:
    """data_parser's wrapped integer (v0.0.40+): unset/infinite/number in one object."""
    return {"set": True, "infinite": False, "number": value}


def submit_body(version: str, request: SubmitRequest) -> dict[str, Any]:
    """The JSON body of `POST /slurm/{version}/job/submit`."""
    legacy = _legacy(version)
    job: dict[str, Any] = {
        "name": request.name,
        "current_working_directory": request.workdir,
        "standard_output": request.stdout,
        "standard_error": request.stderr or request.stdout,
    }
    env = dict(request.environment)
    if legacy:
        # v0.0.38 rejects a submit without `environment`: an object, at least one entry
        job["environment"] = env or {"PATH": "/usr/bin:/bin"}
    else:
        job["environment"] = [f"{k}={v}" for k, v in env.items()] or ["PATH=/usr/bin:/bin"]
    for key, value in (("partition", request.partition), ("account", request.account),
                       ("qos", request.qos), ("comment", request.comment),
                       ("constraints", request.constraints), ("reservation", request.reservation)):
        if value:
            job[key] = value
    minutes = request.time_limit_minutes
    if minutes == 0:
        job["time_limit"] = INFINITE if legacy else {"set": False, "infinite": True, "number": 0}
    elif minutes is not None:
        job["time_limit"] = minutes if legacy else _number(minutes)
    if request.memory_per_node_mb is not None:
        job["memory_per_node"] = request.memory_per_node_mb if legacy else _number(request.memory_per_node_mb)
    if request.cpus_per_task is not None:
        job["cpus_per_task"] = request.cpus_per_task
    if request.nodes is not None:
        # v0.0.38 takes a [min, max] pair in `nodes`; v0.0.40+ a count range string
        job["nodes"] = [request.nodes, request.nodes] if legacy else str(request.nodes)
    if request.tasks is not None:
        job["tasks"] = request.tasks
    if request.gpus:
        # per node, as sbatch --gres sends it: `gres` in v0.0.38, the TRES form in v0.0.40+
        gpu = f"gpu:{request.gpu_type}:{request.gpus}" if request.gpu_type else f"gpu:{request.gpus}"
        if legacy:
            job["gres"] = gpu
        else:
            job["tres_per_node"] = f"gres/{gpu}"
    if request.requeue is not None:
        job["requeue"] = request.requeue
    if request.nice is not None:
        job["nice"] = request.nice
    if request.append_output:
        job["open_mode"] = "append" if legacy else ["APPEND"]
    if legacy:
        return {"script": request.script, "job": job}
    job["script"] = request.script  # the top-level `script` is deprecated in v0.0.41
    return {"job": job}


def parse_submit(body: Mapping[str, Any]) -> str:
    """The job id from a submit response (top-level `job_id`, or the deprecated `result`)."""
    job_id = body.get("job_id")
    if job_id is None and isinstance(body.get("result"), Mapping):
        job_id = body["result"].get("job_id")
    if isinstance(job_id, int) and job_id > 0:
        return str(job_id)
    raise ValueError("the submit response holds no job id")


# --- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestJob:
    """One job as slurmrestd reports it, the same for every version.

    `state` is the SLURM state as `scontrol` prints it (COMPLETING, REQUEUED and CONFIGURING
    win over the base state, as in `job_state_string`); `base_state` is the bare one."""

    job_id: str
    name: str = ""
    state: str = "UNKNOWN"
    base_state: str = "UNKNOWN"
    flags: tuple[str, ...] = ()
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    start_time: int | None = None
    submit_time: int | None = None
    node: str | None = None
    partition: str = ""
    priority: int | None = None
    comment: str = ""
    user_name: str = ""
    standard_output: str = ""
    standard_error: str = ""
    workdir: str = ""
    restarts: int = 0


# job_state_string() (src/common/slurm_protocol_defs.c, 22.05): a set flag names the state, in
# this order; v0.0.38 and scontrol print that name, v0.0.40+ list the base state and the flags
_FLAG_WINS = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
              "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING")


def _unwrap(value: Any) -> int | None:
    """A plain int (v0.0.38) or {set, infinite, number} (v0.0.40+) → int or None (unset)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if not value.get("set", False) or value.get("infinite", False):
            return None
        number = value.get("number")
        return number if isinstance(number, int) and not isinstance(number, bool) else None
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _state(raw: Any) -> tuple[str, str, tuple[str, ...]]:
    """(state, base state, flags) from a string (v0.0.38) or a list (v0.0.40+)."""
    if isinstance(raw, str):
        words = raw.split() or ["UNKNOWN"]
    elif isinstance(raw, list) and raw:
        words = [w for w in raw if isinstance(w, str)] or ["UNKNOWN"]
    else:
        words = ["UNKNOWN"]
    base, flags = words[0], tuple(words[1:])
    shown = next((f for f in _FLAG_WINS if f in flags), base)
    return shown, base, flags


def _exit(raw: Any) -> tuple[int | None, int | None]:
    """(exit code, signal). v0.0.38 gives the raw wait status (7 << 8 for `exit 7`, 9 for
    SIGKILL); v0.0.40+ gives {status: [...], return_code: {…}, signal: {id: {…}, name}}."""
    if isinstance(raw, bool):
        return None, None
    if isinstance(raw, int):
        if raw < 0:
            return None, None
        if raw & 0x7F:  # killed by a signal (WIFSIGNALED)
            return 0, raw & 0x7F
        return (raw >> 8) & 0xFF, 0
    if isinstance(raw, Mapping):
        status = raw.get("status") or []
        if isinstance(status, list) and ("PENDING" in status or "INVALID" in status):
            return None, None
        code = _unwrap(raw.get("return_code"))
        signal_obj = raw.get("signal")
        signal = _unwrap(signal_obj.get("id")) if isinstance(signal_obj, Mapping) else None
        if code is None and signal is None:
            return None, None
        return (code if code is not None else 0), (signal if signal is not None else 0)
    return None, None


def parse_job(raw: Mapping[str, Any]) -> RestJob:
    """One entry of `jobs` in a job-info response (any supported version)."""
    job_id = raw.get("job_id")
    if not isinstance(job_id, int):
        raise ValueError("a job entry has no numeric job_id")
    state, base, flags = _state(raw.get("job_state"))
    code, signal = _exit(raw.get("exit_code"))
    node = _text(raw.get("batch_host")) or _text(raw.get("nodes")) or None
    start = _unwrap(raw.get("start_time"))
    submit = _unwrap(raw.get("submit_time"))
    restarts = raw.get("restart_cnt")
    return RestJob(
        job_id=str(job_id),
        name=_text(raw.get("name")),
        state=state,
        base_state=base,
        flags=flags,
        reason=_reason(raw),
        exit_code=code,
        signal=signal,
        start_time=start or None,
        submit_time=submit or None,
        node=node,
        partition=_text(raw.get("partition")),
        priority=_unwrap(raw.get("priority")),
        comment=_text(raw.get("comment")),
        user_name=_text(raw.get("user_name")),
        standard_output=_text(raw.get("standard_output")),
        standard_error=_text(raw.get("standard_error")),
        workdir=_text(raw.get("current_working_directory")),
        restarts=restarts if isinstance(restarts, int) and not isinstance(restarts, bool) else 0,
    )


def _reason(raw: Mapping[str, Any]) -> str:
    reason = _text(raw.get("state_reason"))
    detail = _text(raw.get("state_description"))
    if reason in ("", "None"):
        return detail
    return f"{reason}: {detail}" if detail and detail != reason else reason


def parse_jobs(body: Mapping[str, Any]) -> list[RestJob]:
    """Every job in a `GET /jobs` or `GET /job/{id}` response."""
    jobs = body.get("jobs")
    if not isinstance(jobs, list):
        raise ValueError("the response holds no `jobs` list")
    return [parse_job(j) for j in jobs if isinstance(j, Mapping)]


def last_update(body: Any) -> int | None:
    """The response's `last_update` (v0.0.40+): slurmctld's time of its last job change."""
    return _unwrap(body.get("last_update")) if isinstance(body, Mapping) else None


def unchanged(http_status: int, body: Any) -> bool:
    """True when `GET /jobs` with `update_time` says nothing changed: HTTP 304 (v0.0.38) or a
    200 with an empty list and slurmctld's "No job changes since update_time" warning (v0.0.40+).
    The caller keeps its previous list: the empty one does not mean the jobs are gone."""
    if http_status == 304:
        return True
    return http_status == 200 and any("No job changes since update_time" in w for w in warnings_of(body))


def queue_position(jobs: Iterable[RestJob], job_id: str) -> int | None:
    """1-based place among pending jobs in priority order (as `squeue --sort=-p,i`)."""
    pending = [j for j in jobs if j.base_state == "PENDING"]
    pending.sort(key=lambda j: (-(j.priority or 0), int(j.job_id)))
    ids = [j.job_id for j in pending]
    return ids.index(job_id) + 1 if job_id in ids else None


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiError:
    error_number: int | None
    error: str
    description: str = ""
    source: str = ""

    def text(self) -> str:
        parts = [p for p in (self.error, self.description) if p]
        seen: list[str] = []
        for part in parts:
            if part not in seen:
                seen.append(part)
        return "; ".join(seen) or "no description"


def errors_of(body: Any) -> list[ApiError]:
    """The `errors` list of any response; entries without content are dropped."""
    if not isinstance(body, Mapping):
        return []
    raw = body.get("errors")
    if not isinstance(raw, list):
        return []
    found = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        # v0.0.38 writes `error_code` in submit answers and `error_number` elsewhere
        number = entry.get("error_number", entry.get("error_code", entry.get("errno")))
        error = ApiError(
            error_number=number if isinstance(number, int) and not isinstance(number, bool) else None,
            error=_text(entry.get("error")),
            description=_text(entry.get("description")),
            source=_text(entry.get("source")),
        )
        if error.error_number or error.error or error.description:
            found.append(error)
    return found


def warnings_of(body: Any) -> list[str]:
    if not isinstance(body, Mapping) or not isinstance(body.get("warnings"), list):
        return []
    return [_text(w.get("description")) for w in body["warnings"] if isinstance(w, Mapping)]


class Problem(enum.Enum):
    """What the caller does about an answer."""

    OK = "ok"
    NOT_FOUND = "not-found"  # the job is unknown (never was, or aged out): it is gone
    AUTH = "auth"  # the headers or the token were refused outright: the profile's fault
    DENIED = "denied"  # the user may not do this (another user's job)
    REFUSED = "refused"  # the request is wrong (partition, account, body): do not retry
    TRANSIENT = "transient"  # slurmctld busy or unreachable: retry with backoff
    UNSPECIFIED = "unspecified"  # error_number -1: see classify()
    UNSERVED = "unserved"  # HTTP 404 without a SLURM error: this path/version is not served


def classify(http_status: int, body: Any) -> Problem:
    """Turn an HTTP status and slurmrestd's `errors` into one Problem.

    A 2xx answer is OK even with `errors` or `warnings` in it (a held job comes back with
    ESLURM_JOB_HELD next to its job id). SLURM 22.05 cannot tell a refused token from an
    unreachable slurmctld: slurmctld drops the connection, slurmrestd answers HTTP 500 with
    error_number -1 ("Unspecified error") to a read and 5005 ("Zero Bytes were transmitted")
    to a submit or cancel (recorded in tests/fixtures/slurmrestd/v0.0.38). UNSPECIFIED leaves
    that call to the backend, which can check the token itself (`token_claims`)."""
    if 200 <= http_status < 400:
        return Problem.OK
    errors = errors_of(body)
    numbers = {e.error_number for e in errors if e.error_number is not None}
    if http_status == 401 or numbers & _AUTH_NUMBERS:
        return Problem.AUTH
    if ESLURM_INVALID_JOB_ID in numbers:
        return Problem.NOT_FOUND
    if ESLURM_ACCESS_DENIED in numbers or http_status == 403:
        return Problem.DENIED
    if http_status == 404 and not errors:
        return Problem.UNSERVED
    if numbers & _TRANSIENT_NUMBERS or http_status in (502, 503, 504):
        return Problem.TRANSIENT
    if -1 in numbers:
        return Problem.UNSPECIFIED
    if http_status >= 500 and not errors:
        return Problem.TRANSIENT
    return Problem.REFUSED


def describe(http_status: int, body: Any) -> str:
    """One line for a person: the SLURM errors, else the HTTP status (never a header)."""
    errors = errors_of(body)
    if errors:
        return "; ".join(dict.fromkeys(e.text() for e in errors))
    if isinstance(body, str) and body.strip():
        return f"HTTP {http_status}: {body.strip()[:200]}"
    return f"HTTP {http_status}"


# --- cancel many (v0.0.40+) ------------------------------------------------------------------


def can_cancel_many(version: str) -> bool:
    """`DELETE /jobs/` with a list of ids (SLURM 23.11+); v0.0.38 cancels one job a request."""
    return not _legacy(version)


def kill_jobs_body(job_ids: Iterable[str]) -> dict[str, Any]:
    """kill_jobs_msg: SIGKILL to the whole job is the default, as `scancel` and DELETE /job/{id}."""
    ids = [str(j) for j in job_ids]
    bad = [j for j in ids if not j.isdigit()]
    if bad:
        raise ValueError(f"job ids {bad!r} are not numbers")
    return {"jobs": ids}


def kill_failures(body: Any) -> dict[str, ApiError]:
    """Job id → why it could not be signalled, from a kill_jobs response's `status` list."""
    failures: dict[str, ApiError] = {}
    status = body.get("status") if isinstance(body, Mapping) else None
    if not isinstance(status, list):
        return failures
    for entry in status:
        if not isinstance(entry, Mapping):
            continue
        job_id = _unwrap(entry.get("job_id"))
        key = str(job_id) if job_id is not None else _text(entry.get("step_id"))
        raw_error = entry.get("error")
        error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
        code = error.get("code")
        failures[key] = ApiError(
            error_number=code if isinstance(code, int) and not isinstance(code, bool) else None,
            error=_text(error.get("string")),
            description=_text(error.get("message")),
        )
    return failures


# --- tokens ----------------------------------------------------------------------------------


class TokenError(ValueError):
    """A token that is not a JWT (its value is never part of the message)."""


def token_claims(token: str) -> dict[str, Any]:
    """The JWT's payload (unverified: slurmctld verifies it; we only read `exp` and `sun`)."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenError("not a JWT (expected three base64url parts separated by dots)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise TokenError("not a JWT (its payload is not base64url JSON)") from None
    if not isinstance(claims, dict):
        raise TokenError("not a JWT (its payload is not a JSON object)")
    return claims


def token_expiry(token: str) -> float | None:
    """Seconds since the epoch when the token expires (`exp`), None if it does not say."""
    exp = token_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_user(token: str) -> str | None:
    """The user a SLURM token was minted for (`sun`)."""
    sun = token_claims(token).get("sun")
    return sun if isinstance(sun, str) and sun else None


def parse_scontrol_token(stdout: str) -> str:
    """`scontrol token` prints `SLURM_JWT=<token>`."""
    for line in stdout.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == "SLURM_JWT" and value:
            return value
    raise TokenError("`scontrol token` printed no SLURM_JWT= line")


def auth_headers(user: str, token: str) -> dict[str, str]:
    """Both headers are required by rest_auth/jwt (a token alone is 401)."""
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
