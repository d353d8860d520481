"""The wire format between a connector's `RelayBackend` and the relay: JSON over HTTPS.

Kept free of heavy imports: the connector loads it in every offloaded pod. Bytes travel as
base64; environment values (secrets) travel only inside a submit body, over TLS, and are
never logged on either side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.backends.base import JobHandle, JobRequest, JobState, JobStatus, Progress
from connector.spec import JobSpec

AUDIENCE = "hpc-offload-relay"  # the projected ServiceAccount token's audience
API = "/v1"
WAIT_SECONDS = 20.0  # a long poll is answered after at most this long, news or not
# What a connector may send of its profile directory: each file at most this big, and at
# most this many files (a ConfigMap and a Secret projected together).
MAX_PROFILE_FILE = 256 * 1024
MAX_PROFILE_FILES = 32

MAX_DELETED_PODS = 1000  # pods in one delete notice

# error kinds a relay answers with, beside the connector's own error classes
UNAUTHENTICATED = "unauthenticated"  # 401: no token, a bad one, or one for another audience
FORBIDDEN = "forbidden"  # 403: another pod's job, or a request naming another pod
HOST_REFUSED = "host-refused"  # 403: the profile's host is outside the relay's allow-list
NO_SESSION = "no-session"  # 404: the relay does not know the session (it restarted): reopen
NO_JOB = "no-job"  # 404: the relay does not follow the job (it restarted): re-register
BAD_REQUEST = "bad-request"  # 400
OVERLOADED = "overloaded"  # 503: the relay takes no more sessions or jobs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def request_to_wire(request: JobRequest) -> dict[str, Any]:
    return {"spec": request.spec.to_dict(), "job_dir": request.job_dir, "env": dict(request.env),
            "run": request.run, "part": request.part}


def request_from_wire(data: Mapping[str, Any]) -> JobRequest:
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map names to strings")
    run = data.get("run", 0)
    job_dir = data.get("job_dir")
    if not isinstance(job_dir, str) or not isinstance(run, int) or run < 0:
        raise ValueError("job_dir and run are required")
    spec = JobSpec.from_dict(data.get("spec") or {})
    part = data.get("part") or ""
    if part:  # a whole pod's container: one of the spec's parts
        spec.part(str(part))
    return JobRequest(spec, job_dir, env, run, str(part))


def handle_to_wire(handle: JobHandle) -> dict[str, Any]:
    return {"job_id": handle.job_id, "job_dir": handle.job_dir, "stdout": handle.stdout,
            "stderr": handle.stderr, "part": handle.part}


def handle_from_wire(data: Mapping[str, Any]) -> JobHandle:
    values = [data.get(key) for key in ("job_id", "job_dir", "stdout")]
    stderr = data.get("stderr")
    if not all(isinstance(v, str) and v for v in values) or not (stderr is None or isinstance(stderr, str)):
        raise ValueError("a job handle needs job_id, job_dir and stdout")
    part = data.get("part") or ""
    if not isinstance(part, str) or (part and not _PART.fullmatch(part)):
        raise ValueError("a handle's part is a container name")
    return JobHandle(str(values[0]), str(values[1]), str(values[2]), stderr, part)


_PART = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_STATUS_FIELDS = ("job_id", "raw_state", "reason", "exit_code", "signal", "start_estimate",
                  "queue_position", "node", "payload_ended", "requeued", "stderr_tail")


def status_to_wire(status: JobStatus) -> dict[str, Any]:
    data = {name: getattr(status, name) for name in _STATUS_FIELDS}
    data["state"] = status.state.value
    return data


def status_from_wire(data: Mapping[str, Any]) -> JobStatus:
    values = {name: data[name] for name in _STATUS_FIELDS if name in data}
    return JobStatus(state=JobState(data.get("state", "UNKNOWN")), **values)


def progress_to_wire(progress: Progress) -> dict[str, Any]:
    return {"stdout": b64(progress.stdout), "stderr": b64(progress.stderr),
            "exit_status": progress.exit_status}


def progress_from_wire(data: Mapping[str, Any]) -> Progress:
    code = data.get("exit_status")
    return Progress(unb64(data.get("stdout", "")), unb64(data.get("stderr", "")),
                    code if isinstance(code, int) else None)


def profile_files(directory: Path) -> dict[str, bytes]:
    """The files of a mounted profile (the ConfigMap's and the Secret's keys), without the
    kubelet's `..data` bookkeeping entries."""
    files: dict[str, bytes] = {}
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if name.startswith(".") or not path.is_file():
            continue
        if len(files) >= MAX_PROFILE_FILES:
            raise ValueError(f"the profile has more than {MAX_PROFILE_FILES} files")
        data = path.read_bytes()
        if len(data) > MAX_PROFILE_FILE:
            raise ValueError(f"profile file {name} is larger than {MAX_PROFILE_FILE} bytes")
        files[name] = data
    return files


def fingerprint(files: Mapping[str, bytes]) -> str:
    """sha256 over every profile file (name and content): a rotated Secret or a changed
    ConfigMap is another session."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def claim(key: bytes, namespace: str, pod_uid: str, job_id: str) -> str:
    """What a relay hands a connector for a job it registered: proof, after a relay restart,
    that this pod registered this job (HMAC with the relay's key; the pod cannot forge it)."""
    message = f"{namespace}\0{pod_uid}\0{job_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def claim_ok(key: bytes, namespace: str, pod_uid: str, job_id: str, presented: Any) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(claim(key, namespace, pod_uid, job_id), presented)
