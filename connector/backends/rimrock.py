"""Rimrock, the paper's backend: SLURM behind a REST service (process-project/rimrock),
authenticated by a grid proxy, with files on the site's PLGData service.

What each operation costs (Rimrock's own rules, testbed/rimrock/__init__.py):
- submit: one `POST /api/jobs` (one SSH login and sbatch on the site), plus one PLGData
  upload of the 0600 env file when the job gets variables (never in the script).
- status of one job: `GET /api/jobs/{id}` (one squeue for that job). Of several: one
  `GET /api/jobs`, which updates and lists *all* the user's jobs in Rimrock (one squeue per
  host for every job Rimrock still polls): one request, but its answer grows with the user's
  Rimrock history.
- cancel: Rimrock has no batch cancel: one `PUT /api/jobs/{id} {"action": "abort"}` per job.
- output: a ranged `GET` of Rimrock's `stdout_path`/`stderr_path` URLs (PLGData
  `/download/…`, same PROXY header) from the offset already printed; the end marker likewise.
- the end: Rimrock reports no exit code. A rendered script leaves its payload's exit status
  beside its output (`exit-status`), read over the same download. To tell a signal, a time
  limit or a verbatim script's exit code, one `POST /api/process` (Rimrock's command API)
  runs `scontrol show job` when the job has ended; where a site refuses it, a verbatim
  script ends 0 when Rimrock says FINISHED and 1 when it says ERROR.
Rimrock's quirks handled: a job cancelled outside reads RUNNING until it leaves SLURM (so
the pod runs on until then); ABORTED is answered before SLURM is done, so it counts as ended
once Rimrock shows the job's end time; ERROR later turns FINISHED (the first end seen wins).
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlparse

import requests

from connector.backends.base import (
    Backend,
    Capability,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    Progress,
)
from connector.backends.slurm_options import sbatch_options
from connector.errors import AuthError, BackendError, ProfileError, TransientError
from connector.render import JobPaths, payload_lines, render_batch_script, render_env_file
from connector.transport.base import READ_LIMIT

CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 60.0  # Rimrock's own limit per operation is 20 s
_SCRIPT_FAILED = (22, 23, 24)  # Rimrock's start/stop scripts: sbatch/scancel, scontrol, no id
_SLURM_END = {
    "COMPLETED": JobState.COMPLETED, "FAILED": JobState.FAILED, "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT, "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL, "PREEMPTED": JobState.PREEMPTED,
    "BOOT_FAIL": JobState.BOOT_FAIL, "DEADLINE": JobState.DEADLINE,
    "SPECIAL_EXIT": JobState.FAILED, "REVOKED": JobState.CANCELLED,
}
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


class RimrockBackend(Backend):
    type_name = "rimrock"
    capabilities = Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT

    def __init__(self, profile: Any, runtime_dir: str | None = None) -> None:
        super().__init__(profile, runtime_dir)
        self.endpoint = _url(profile, "endpoint", profile.setting("endpoint"))
        self.data_url = _url(profile, "data_url", profile.setting("data_url", self.endpoint))
        self.data_prefix = str(profile.setting("data_prefix", "")).rstrip("/")
        host = profile.setting("host")
        if not isinstance(host, str) or not host or any(c.isspace() or c == "/" for c in host):
            raise ProfileError(f"profile {profile.name!r}: rimrock needs `host`, the login node "
                               "Rimrock submits to (e.g. prometheus.cyfronet.pl)")
        self.host = host
        try:
            self.timeout = float(profile.setting("timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            raise ProfileError(f"profile {profile.name!r}: `timeout` "
                               f"{profile.setting('timeout')!r} is not seconds") from None
        verify = profile.setting("ca_bundle", True)
        self.http = requests.Session()
        self.http.verify = verify if isinstance(verify, (bool, str)) else True
        self.requests = 0
        self._ended: dict[str, JobStatus] = {}  # first end seen per job: Rimrock may change it
        self._process_api = True  # until the site refuses /api/process

    # --- HTTP -------------------------------------------------------------------------------

    def _proxy_header(self) -> str:
        """The profile's proxy, read afresh (a rotated Secret is used at once), base64 as
        Rimrock wants it. Only its shape is checked here: Rimrock verifies the rest."""
        path = self.profile.require_secret("proxy")
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"profile {self.profile.name!r}: cannot read `proxy`: "
                               f"{exc.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem or b"PRIVATE KEY-----" not in pem:
            raise ProfileError(f"profile {self.profile.name!r}: `proxy` is not a grid proxy (PEM: "
                               "the proxy certificate, its private key and the user's certificate, "
                               "as grid-proxy-init or voms-proxy-init write it)")
        return base64.b64encode(pem).decode()

    def _call(self, method: str, url: str, what: str, *, json: Any = None,
              headers: dict[str, str] | None = None, files: Any = None,
              data: Any = None) -> requests.Response:
        """One request with the proxy; network faults are transient, refusals are not."""
        self.requests += 1
        try:
            return self.http.request(method, url, json=json, files=files, data=data,
                                     headers={"PROXY": self._proxy_header(), **(headers or {})},
                                     timeout=(CONNECT_TIMEOUT, self.timeout), allow_redirects=False)
        except requests.exceptions.InvalidURL as exc:
            raise ProfileError(f"profile {self.profile.name!r}: `endpoint` {self.endpoint!r}: "
                               f"{type(exc).__name__}") from None
        except requests.exceptions.SSLError as exc:
            raise BackendError(f"{what}: TLS with {urlparse(url).netloc} failed "
                               f"({_short(exc)}); set `ca_bundle` if the site uses its own CA") from None
        except requests.RequestException as exc:
            raise TransientError(f"{what}: cannot reach {urlparse(url).netloc}: {_short(exc)}") from None

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        """Rimrock's answers as the connector's errors (its error body has no secret)."""
        code = response.status_code
        if code < 300:
            return response
        body = _json_body(response)
        said = body.get("error_message") or body.get("message") or response.reason or ""
        if code in (401, 403):
            raise AuthError(f"{what}: Rimrock refused the proxy (HTTP {code}"
                            f"{': ' + said if said else ''}); renew `proxy` in profile "
                            f"{self.profile.name!r}'s Secret")
        if code == 408:
            raise TransientError(f"{what}: Rimrock timed out ({said})")
        if code in (502, 503, 504):
            raise TransientError(f"{what}: HTTP {code} from {urlparse(response.url).netloc}")
        exit_code = body.get("exit_code")
        detail = _script_message(body.get("standard_output"))
        if code == 500 and exit_code in _SCRIPT_FAILED:
            raise BackendError(f"{what}: {said}: {detail or body.get('error_output') or 'no detail'}")
        if "UnknownHostException" in str(said):
            raise ProfileError(f"profile {self.profile.name!r}: Rimrock does not know `host` "
                               f"{self.host!r}")
        if code == 500:
            raise TransientError(f"{what}: Rimrock failed: {said or 'no message'}")
        raise BackendError(f"{what}: HTTP {code} from Rimrock: {said or response.text[:200]}")

    def _api(self, path: str) -> str:
        return f"{self.endpoint}/api/{path}"

    def _data(self, action: str, path: str) -> str:
        return f"{self.data_url}/{action}/{self.data_prefix}{path}"

    # --- the job operations -----------------------------------------------------------------

    def render(self, request: JobRequest) -> str:
        spec = request.spec
        if spec.script is not None:
            return spec.script
        paths = request.paths
        # Rimrock adds nothing to sbatch's command line: the script carries all of it
        identity = [f"--job-name={request.tag}", f"--comment={request.tag}",
                    f"--output={paths.output}", f"--error={paths.error}", "--open-mode=append"]
        directives = [f"#SBATCH {shlex.quote(option)}" for option in identity]
        directives += [f"#SBATCH {option}" for option in sbatch_options(spec.resources)]
        body = payload_lines(spec, paths, request.env.keys(), self.profile.setting("image"),
                             env_file=bool(request.env))
        return render_batch_script(directives, body)

    def submit(self, request: JobRequest) -> JobHandle:
        script = self.render(request)
        if request.env and request.spec.script is None:
            self._upload_env(request)
        answer = self._check(self._call(
            "POST", self._api("jobs"), "submit",
            json={"host": self.host, "working_directory": request.job_dir, "script": script,
                  "tag": request.tag}), "submit")
        self.scheduler_calls += 1
        return self._handle(_json_body(answer), request.job_dir)

    def _upload_env(self, request: JobRequest) -> None:
        """The variables as a 0600 file beside the script, through PLGData (never in the
        script Rimrock keeps); the script sources it and removes it at once."""
        paths = request.paths
        self._check(self._call(
            "POST", self._data("upload", paths.job_dir), "uploading the job's environment",
            files={"file": ("job.env", render_env_file(request.env), "application/octet-stream")},
            data={"recursive": "true", "locale": "en"}), "uploading the job's environment")

    def _handle(self, info: dict[str, Any], job_dir: str) -> JobHandle:
        job_id, stdout = info.get("job_id"), info.get("stdout_path")
        if not isinstance(job_id, str) or not isinstance(stdout, str):
            raise BackendError(f"Rimrock answered without job_id/stdout_path: {str(info)[:200]}")
        stderr = info.get("stderr_path")
        return JobHandle(job_id, job_dir, stdout, stderr if stderr and stderr != stdout else None)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = [j for j in job_ids if j not in self._ended]
        infos: dict[str, dict[str, Any]] = {}
        if len(wanted) == 1:
            response = self._call("GET", self._api(f"jobs/{wanted[0]}"), "status")
            if response.status_code != 404:
                infos[wanted[0]] = _json_body(self._check(response, "status"))
            self.scheduler_calls += 1
        elif wanted:
            listed = _json_body(self._check(self._call("GET", self._api("jobs"), "status"), "status"),
                                default=[])
            infos = {i["job_id"]: i for i in listed if isinstance(i, dict) and "job_id" in i}
            self.scheduler_calls += 1
        result = {}
        for job_id in job_ids:
            if job_id in self._ended:
                result[job_id] = self._ended[job_id]
            elif job_id not in infos:
                result[job_id] = JobStatus(job_id, JobState.UNKNOWN, "GONE",
                                           reason="Rimrock no longer knows the job")
            else:
                result[job_id] = self._status(job_id, infos[job_id])
                if result[job_id].state.ended:
                    self._ended[job_id] = result[job_id]
        return result

    def _status(self, job_id: str, info: dict[str, Any]) -> JobStatus:
        said = str(info.get("status", ""))
        if said == "QUEUED":
            return JobStatus(job_id, JobState.PENDING, said)
        if said == "RUNNING":
            return JobStatus(job_id, JobState.RUNNING, said)
        if said == "ABORTED":  # answered at once; SLURM is done when Rimrock has its end time
            if not info.get("end_time"):
                return JobStatus(job_id, JobState.RUNNING, said, reason="aborting")
            found = self._slurm_state(job_id)  # Rimrock also says ABORTED for a job that had
            if found is not None and found.state.ended and found.state is not JobState.CANCELLED:
                return found  # ended on its own just before the abort
            return JobStatus(job_id, JobState.CANCELLED, said, reason="aborted through Rimrock")
        if said in ("FINISHED", "ERROR"):
            return self._ended_status(job_id, said, info)
        # "": a SLURM state outside Rimrock's table; ask SLURM itself what it is
        return self._slurm_state(job_id) or JobStatus(job_id, JobState.RUNNING, said or "UNMAPPED")

    def _ended_status(self, job_id: str, said: str, info: dict[str, Any]) -> JobStatus:
        """How it ended: SLURM's own record (signals, limits), else the rendered script's end
        marker, else Rimrock's word alone (a verbatim script: FINISHED 0, ERROR 1). Rimrock
        also says FINISHED for a job its queue query missed (controller down): SLURM's
        record of a job still running wins."""
        found = self._slurm_state(job_id)
        if found is not None and not found.state.ended:
            return found
        marker = self._marker(info)
        if found is not None:
            if marker is not None and found.state in (JobState.COMPLETED, JobState.FAILED) \
                    and not found.signal:
                return found.with_(exit_code=marker)
            return found
        if marker is not None:
            return JobStatus(job_id, JobState.COMPLETED if marker == 0 else JobState.FAILED, said,
                             exit_code=marker, signal=0)
        if _rendered(info):
            return JobStatus(job_id, JobState.UNKNOWN, said, reason="the job ended without leaving "
                             "its exit status (killed, cancelled or out of time)")
        if said == "FINISHED":
            return JobStatus(job_id, JobState.COMPLETED, said, exit_code=0, signal=0,
                             reason="Rimrock reports no exit code")
        return JobStatus(job_id, JobState.FAILED, said, reason="Rimrock reports no exit code")

    def _marker(self, info: dict[str, Any]) -> int | None:
        if not _rendered(info):
            return None
        url = str(info["stdout_path"])[: -len("output.log")] + "exit-status"
        text = self._get_bytes(url, 0, 64, "reading the end marker")
        value = text.decode("ascii", "replace").strip()
        return int(value) if value.isdigit() else None

    def _slurm_state(self, job_id: str) -> JobStatus | None:
        """SLURM's own record of the job (`scontrol show job` through Rimrock's `/api/process`):
        None when SLURM no longer knows it or the site does not offer the API."""
        number = job_id.split(".", 1)[0]
        if not self._process_api or not number.isdigit():
            return None
        what = "asking SLURM about the job"
        response = self._call("POST", self._api("process"), what,
                              json={"host": self.host, "command": f"scontrol show job -o {number}"})
        if response.status_code in (404, 405, 422) or (response.status_code == 403 and
                                                         "error_message" not in _json_body(response)):
            self._process_api = False  # not offered here: Rimrock's words must do
            return None
        body = _json_body(self._check(response, what))
        self.scheduler_calls += 1
        said = f"{body.get('standard_output') or ''}\n{body.get('error_output') or ''}"
        if body.get("exit_code") != 0:
            if "Invalid job id" in said:
                return None
            raise TransientError(f"{what}: {said.strip()[:200] or 'scontrol failed'}")
        fields = dict(re.findall(r"(?:^|\s)(JobState|ExitCode|Reason)=(\S+)", said))
        raw = fields.get("JobState", "")
        reason = fields.get("Reason", "")
        reason = "" if reason in ("None", "(null)") else reason
        if raw in _SLURM_PENDING:
            return JobStatus(job_id, JobState.PENDING, raw, reason=reason)
        if raw not in _SLURM_END:
            return JobStatus(job_id, JobState.RUNNING, raw or "UNKNOWN", reason=reason)
        code, _, signal = fields.get("ExitCode", "0:0").partition(":")
        return JobStatus(job_id, _SLURM_END[raw], raw, reason=reason,
                         exit_code=int(code) if code.isdigit() else None,
                         signal=int(signal) if signal.isdigit() else None)

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:  # Rimrock cancels one job per request
            response = self._call("PUT", self._api(f"jobs/{job_id}"), f"cancelling {job_id}",
                                  json={"action": "abort"})
            self.scheduler_calls += 1
            if response.status_code != 404:  # a job Rimrock forgot has nothing to cancel
                self._check(response, f"cancelling {job_id}")
            self._ended.pop(job_id, None)

    def find(self, request: JobRequest) -> JobHandle | None:
        what = "finding the job by its tag"
        url = f"{self._api('jobs')}?{urlencode({'tag': request.tag})}"
        listed = _json_body(self._check(self._call("GET", url, what), what), default=[])
        tagged = [i for i in listed if isinstance(i, dict) and i.get("tag") == request.tag]
        self.scheduler_calls += 1
        if not tagged:
            return None
        newest = max(tagged, key=lambda i: _number(str(i.get("job_id", ""))))
        return self._handle(newest, request.job_dir)

    def workdir(self) -> str:
        configured = str(self.profile.setting("workdir", ""))
        if not configured.startswith("/"):
            raise ProfileError(f"profile {self.profile.name!r}: rimrock needs `workdir`, an "
                               f"absolute directory on the HPC side (got {configured!r})")
        return configured.rstrip("/")

    # --- output -----------------------------------------------------------------------------

    def _get_bytes(self, url: str, offset: int, limit: int, what: str) -> bytes:
        """Bytes [offset, offset+limit) of a PLGData file: a Range request (206); a server that
        ignores Range (200) is cut here; past the end (416) or no file yet (404) is nothing."""
        response = self._call("GET", url, what, headers={"Range": f"bytes={offset}-{offset + limit - 1}"})
        if response.status_code in (404, 416):
            return b""
        self._check(response, what)
        if response.status_code == 206:
            return response.content[:limit]
        return response.content[offset:offset + limit]

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        out = self.read_output(handle, "stdout", stdout_offset) if stdout_offset is not None else b""
        err = self.read_output(handle, "stderr", stderr_offset) if stderr_offset is not None else b""
        status = None
        if marker and handle.stdout.endswith("/output.log"):
            text = self._get_bytes(handle.stdout[: -len("output.log")] + "exit-status", 0, 64,
                                   "reading the end marker")
            value = text.decode("ascii", "replace").strip()
            status = int(value) if value.isdigit() else None
        return Progress(out, err, status)

    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        url = handle.stdout if stream == "stdout" else handle.stderr
        if not url:
            return b""
        return self._get_bytes(url, offset, limit, f"reading the job's {stream}")

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "http_requests": self.requests}

    def close(self) -> None:
        self.http.close()


def _url(profile: Any, key: str, value: object) -> str:
    text = str(value or "")
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ProfileError(f"profile {profile.name!r}: rimrock needs `{key}`, Rimrock's base URL "
                           f"(https://host[:port]), got {text!r}")
    return text.rstrip("/")


def _json_body(response: requests.Response, default: Any = None) -> Any:
    try:
        return response.json()
    except ValueError:
        return {} if default is None else default


def _script_message(output: object) -> str:
    """The error_message inside the JSON a Rimrock script printed (sbatch's own words)."""
    text = str(output or "")
    match = re.search(r'"error_message":\s*"(.*)"', text, re.S)
    return (match.group(1) if match else text).strip()[:500]


def _rendered(info: dict[str, Any]) -> bool:
    return str(info.get("stdout_path", "")).endswith("/" + JobPaths("/x").output.rsplit("/", 1)[1])


def _number(job_id: str) -> int:
    head = job_id.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"
