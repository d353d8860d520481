"""slurm-rest: SLURM through slurmrestd with a JWT (control over REST), the job's files over SSH
when the profile also gives SSH access (`host`, the Secret's `ssh-privatekey` and
`known_hosts`), else nowhere: the pod log then says once where the output is on the HPC side.

The API version is the profile's `api_version`, else the newest one both the server (its
`/openapi/v3`) and this connector (`slurm_rest_api.SUPPORTED_VERSIONS`) know. The token is the
Secret's `token`, read afresh for every request (a rotated Secret is used at once), or, without
one, minted with `scontrol token lifespan=N` over SSH and renewed before it expires.

What each operation costs slurmctld (one RPC per REST request, none for `/openapi/v3`):
- submit: one `POST /job/submit` (plus one SSH round trip making the job directory).
- status of one job: one `GET /job/{id}` (~4 kB, ~20 ms on the testbed); while it is pending,
  every 5 minutes one `GET /jobs` more for its queue position. Of several: one `GET /jobs`,
  which lists every job slurmctld holds, finished ones included (~4 kB of JSON each: 477 jobs
  were 1.9 MB in 0.7 s on the testbed); from v0.0.40 the previous answer's `last_update` goes
  back as `update_time`, so an unchanged queue answers with an empty list.
- cancel: v0.0.40+ one `DELETE /jobs/` for all; v0.0.38 one `DELETE /job/{id}` per job.
- find (reattach by the tag): one `GET /jobs`.
- output: SSH reads, as slurm-ssh (no slurmctld call).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import requests

from connector.backends import slurm_rest_api as api
from connector.backends.base import Capability, JobHandle, JobRequest, JobState, JobStatus
from connector.backends.shell import ShellBackend
from connector.backends.slurm import ACTIVE_STATES, FINAL_STATES, TRANSIENT
from connector.backends.slurm_rest_api import Problem, RestJob, SubmitRequest
from connector.backends.slurm_rest_options import (
    directive_fields,
    expand_output_pattern,
    resource_fields,
)
from connector.errors import AuthError, BackendError, ProfileError, TransientError
from connector.render import payload_lines, render_batch_script

log = logging.getLogger("hpc-connector")

CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_TOKEN_LIFESPAN = 1800  # seconds; scontrol token's own default
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # a REST job gets no login environment
POSITION_INTERVAL = 300.0  # seconds between queue-position lookups of one pending job
CAN_ACT_FOR_OTHERS = ("root", "slurm")  # their tokens may name another user (rest_auth/jwt)
SSH_CAPABILITIES = (Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT | Capability.FILES
                    | Capability.SHELL)


class SlurmRestBackend(ShellBackend):
    type_name = "slurm-rest"
    access = "ssh"  # only for files and minting tokens, and only with `host`
    capabilities = Capability.NONE  # with SSH access: SSH_CAPABILITIES (set per profile)

    def __init__(self, profile: Any, runtime_dir: str | None = None) -> None:
        super().__init__(profile, runtime_dir)
        self.ssh = bool(profile.setting("host"))
        self.capabilities = self.capabilities_for(profile)  # type: ignore[misc]
        self.http = requests.Session()
        self.http_requests = 0
        self.tokens_minted = 0
        self.version: str | None = None
        self._minted: tuple[str, float] | None = None  # (token, expiry) minted over SSH
        self._listing: tuple[int, list[RestJob]] | None = None  # (last_update, jobs): v0.0.40+
        self._home: str | None = None
        self._positions: dict[str, tuple[float, int | None]] = {}  # job id -> (asked at, position)

    @classmethod
    def capabilities_for(cls, profile: Any) -> Capability:
        """Output, files and shells need SSH access; REST alone gives none of them."""
        return SSH_CAPABILITIES if profile.setting("host") else Capability.NONE

    # --- profile ----------------------------------------------------------------------------

    def _fail(self, message: str) -> ProfileError:
        return ProfileError(f"profile {self.profile.name!r}: {message}")

    @property
    def endpoint(self) -> str:
        text = str(self.profile.setting("endpoint") or "")
        parsed = urlparse(text)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query:
            raise self._fail(f"slurm-rest needs `endpoint`, slurmrestd's URL (http(s)://host:port), "
                             f"got {text!r}")
        return text.rstrip("/")

    @property
    def user(self) -> str:
        user = self.profile.setting("user")
        if not isinstance(user, str) or not user or any(c.isspace() for c in user) or user.startswith("-"):
            raise self._fail(f"slurm-rest needs `user`, the HPC user name the token is for, got {user!r}")
        return user

    def _timeout(self) -> float:
        try:
            return float(self.profile.setting("timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            raise self._fail(f"`timeout` {self.profile.setting('timeout')!r} is not seconds") from None

    def workdir(self) -> str:
        """With SSH: relative to the user's home, as slurm-ssh. Without: an absolute directory
        that exists on the HPC side (slurmrestd can make none)."""
        if self.ssh:
            return super().workdir()
        configured = str(self.profile.setting("workdir", ""))
        if not configured.startswith("/"):
            raise self._fail(f"slurm-rest without SSH access needs `workdir`, an absolute directory "
                             f"that exists on the HPC side (got {configured!r})")
        return configured.rstrip("/")

    # --- the token --------------------------------------------------------------------------

    def _token(self) -> str:
        """The Secret's `token`, read afresh; else one minted over SSH. Checked for shape,
        expiry and user here: slurmctld's refusal of a bad token says nothing (see classify)."""
        path = self.profile.secret_path("token")
        if path is not None and path.exists():
            try:
                text = path.read_text().strip()
            except (OSError, UnicodeError) as exc:
                cause = getattr(exc, "strerror", None) or type(exc).__name__
                raise self._fail(f"cannot read `token`: {cause}") from None
            token = text.removeprefix("SLURM_JWT=")
            self._check_token(token, "the `token` in its Secret")
            return token
        if self.ssh:
            return self._mint()
        raise self._fail("slurm-rest needs `token` in its Secret (a JWT from `scontrol token`), or SSH "
                         "access (`host`, `user`, the Secret's `ssh-privatekey` and `known_hosts`) to "
                         "mint one")

    def _check_token(self, token: str, what: str) -> None:
        try:
            claims = api.token_claims(token)
        except api.TokenError as exc:
            raise self._fail(f"{what} is {exc}; expected the JWT `scontrol token` prints "
                             "(the part after SLURM_JWT=)") from None
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time():
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp))
            raise AuthError(f"profile {self.profile.name!r}: {what} expired at {when}; put a fresh one "
                            f"there (scontrol token username={self.user} lifespan=SECONDS)")
        sun = claims.get("sun")
        if isinstance(sun, str) and sun and sun != self.user and sun not in CAN_ACT_FOR_OTHERS:
            raise AuthError(f"profile {self.profile.name!r}: {what} is refused here: it was minted for user "
                            f"{sun!r}, not for `user` {self.user!r}")

    def _lifespan(self) -> int:
        value = self.profile.setting("token_lifespan", DEFAULT_TOKEN_LIFESPAN)
        try:
            lifespan = int(value)
        except (TypeError, ValueError):
            lifespan = 0
        if lifespan < 60:
            raise self._fail(f"`token_lifespan` {value!r} is not a number of seconds (60 or more)")
        return lifespan

    def _mint(self) -> str:
        """`scontrol token lifespan=N` as the profile's user over SSH, renewed when a fifth of
        its life (at most five minutes) is left. Its output is a credential: never logged."""
        lifespan = self._lifespan()
        if self._minted is not None:
            token, expiry = self._minted
            if expiry - time.time() > min(300.0, lifespan / 5):
                return token
        argv = ["scontrol", "token", f"lifespan={lifespan}"]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if not result.ok:
            said = result.stderr.strip()[:300] or f"exit status {result.returncode}"
            if any(marker in said for marker in TRANSIENT):
                raise TransientError(f"minting a slurmrestd token over SSH: {said}")
            raise AuthError(f"profile {self.profile.name!r}: `scontrol token` over SSH failed ({said}); "
                            "put a `token` in the profile's Secret instead")
        try:
            token = api.parse_scontrol_token(result.stdout)
        except api.TokenError:
            raise BackendError("`scontrol token` over SSH printed no SLURM_JWT= line") from None
        self._check_token(token, "the token `scontrol token` minted")
        expiry = api.token_expiry(token) or time.time() + lifespan
        self._minted = (token, expiry)
        self.tokens_minted += 1
        log.debug("minted a slurmrestd token over SSH, valid %.0fs", expiry - time.time())
        return token

    # --- HTTP -------------------------------------------------------------------------------

    def _send(self, method: str, path: str, what: str, *, json: Any = None,
              params: dict[str, str] | None = None, first: bool = False) -> tuple[int, Any]:
        """One request with fresh credentials. A network fault is transient, except on the
        first contact of a connector that has submitted nothing (`first`): then an endpoint
        that does not answer is the profile's fault."""
        endpoint = self.endpoint
        headers = api.auth_headers(self.user, self._token())
        self.http_requests += 1
        try:
            response = self.http.request(method, endpoint + path, json=json, params=params, headers=headers,
                                         timeout=(CONNECT_TIMEOUT, self._timeout()), allow_redirects=False,
                                         verify=self._verify())
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema):
            raise self._fail(f"`endpoint` {endpoint!r} is not a URL slurmrestd can be reached at") from None
        except requests.exceptions.SSLError as exc:
            raise BackendError(f"{what}: TLS with {urlparse(endpoint).netloc} failed ({_short(exc)}); "
                               "set `ca_bundle` if the site uses its own CA") from None
        except requests.exceptions.ConnectionError as exc:
            if first:
                raise self._fail(f"`endpoint` {endpoint} does not answer ({_reason(exc)}); expected "
                                 "slurmrestd's URL, http(s)://host:port") from None
            raise TransientError(f"{what}: cannot reach slurmrestd at {urlparse(endpoint).netloc}: "
                                 f"{_reason(exc)}") from None
        except requests.RequestException as exc:
            raise TransientError(f"{what}: slurmrestd at {urlparse(endpoint).netloc}: {_reason(exc)}") from None
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return response.status_code, body

    def _verify(self) -> bool | str:
        value = self.profile.setting("ca_bundle", True)
        return value if isinstance(value, bool | str) else True

    def _request(self, method: str, path: str, what: str, *, json: Any = None,
                 params: dict[str, str] | None = None, first: bool = False,
                 accept: tuple[Problem, ...] = ()) -> tuple[Problem, int, Any]:
        """A request that reaches slurmctld (counted); its answer as a Problem, raising for
        every problem the caller does not `accept`."""
        self.scheduler_calls += 1
        status, body = self._send(method, path, what, json=json, params=params, first=first)
        problem = api.classify(status, body)
        if problem is Problem.OK or problem in accept:
            return problem, status, body
        said = api.describe(status, body)
        if problem is Problem.AUTH:
            raise AuthError(f"{what}: slurmrestd refused the credentials ({said}); check `user` and the "
                            f"`token` of profile {self.profile.name!r}")
        if problem is Problem.DENIED:
            raise AuthError(f"{what}: SLURM denied it to user {self.user!r} ({said})")
        if problem is Problem.TRANSIENT:
            raise TransientError(f"{what}: {said}")
        if problem is Problem.UNSPECIFIED:
            raise TransientError(f"{what}: slurmctld refused or did not answer ({said}): it is down, or "
                                 "it does not accept the token (slurmctld answers a token signed with "
                                 "another key this way)")
        if problem is Problem.UNSERVED:
            raise BackendError(f"{what}: {path} is not served by this slurmrestd (HTTP 404)")
        if problem is Problem.NOT_FOUND:
            raise BackendError(f"{what}: {said}")
        raise BackendError(f"{what}: slurmrestd refused it: {said}")

    # --- the API version --------------------------------------------------------------------

    def _ensure_version(self, first: bool) -> str:
        """The version to talk, found once: the profile's `api_version` checked with one ping,
        else the newest both sides know (`/openapi/v3`; pings newest-first where it is
        missing). Nothing is submitted before this succeeded."""
        if self.version is not None:
            return self.version
        wanted = self.profile.setting("api_version")
        if wanted is not None and (not isinstance(wanted, str) or not wanted):
            raise self._fail(f"`api_version` {wanted!r} is not a version like v0.0.38")
        try:
            if wanted:
                api.choose_version([], wanted)  # well-formed and supported
                status, body = self._send("GET", api.ping_path(wanted), "checking the API version", first=first)
                if api.classify(status, body) is Problem.UNSERVED:
                    served = [v for v in self._served(first) if v != wanted]
                    shown = ", ".join(served) or "no version this connector knows"
                    raise api.ApiVersionError(f"api_version {wanted} is not served by this slurmrestd "
                                              f"(it serves: {shown})")
                self.version = wanted
            else:
                self.version = api.choose_version(self._served(first))
        except api.ApiVersionError as exc:
            hint = "" if wanted else "; `endpoint` must be slurmrestd of SLURM 22.05 or later"
            raise self._fail(f"{exc}{hint}") from None
        return self.version

    def _served(self, first: bool) -> list[str]:
        status, body = self._send("GET", "/openapi/v3", "reading slurmrestd's API description", first=first)
        if status == 401:
            raise AuthError(f"slurmrestd refused the credentials of profile {self.profile.name!r} "
                            f"({api.describe(status, body)}); check `user` and `token`")
        served = api.served_versions(body) if status == 200 and isinstance(body, dict) else []
        if served:
            return served
        for version in api.probe_order():  # no description: ask each version we know
            status, body = self._send("GET", api.ping_path(version), "probing the API version", first=first)
            if api.classify(status, body) is not Problem.UNSERVED:
                return [version]
        return []

    # --- submit -----------------------------------------------------------------------------

    def render(self, request: JobRequest) -> str:
        """The script slurmrestd runs. It carries no `#SBATCH` line (slurmrestd reads none: the
        options travel in the submit request); without SSH it makes its own job directory."""
        spec = request.spec
        if spec.script is not None:
            return spec.script
        res = spec.resources
        several = (res.tasks or 1) > 1 or (res.nodes or 1) > 1
        launcher = ["srun", "--kill-on-bad-exit=1"] if several and spec.effective_runtime() != "enroot" else []
        body = payload_lines(spec, request.paths, request.env.keys(), self.profile.setting("image"),
                             launcher=launcher)
        head = ["# Submitted through slurmrestd: the job's options travel in the request, not here."]
        if not self.ssh:
            job_dir = shlex.quote(request.job_dir)
            head.append(f"mkdir -p -m 700 -- {job_dir} && cd -- {job_dir} || exit 1")
        return render_batch_script(head, body)

    def _outputs(self, request: JobRequest) -> tuple[str, str]:
        """Where a rendered job's stdout and stderr go: its job directory when SSH made it,
        else beside it (slurmstepd opens them before the script can make the directory)."""
        if self.ssh:
            return request.paths.output, request.paths.error
        return f"{request.job_dir}.out", f"{request.job_dir}.err"

    def _environment(self, request: JobRequest) -> dict[str, str]:
        """What the job starts with: no login environment comes with a REST submission, so a
        PATH, USER and (known over SSH) HOME, then the pod's variables. Values never logged."""
        env = {"PATH": DEFAULT_PATH, "USER": self.user, "LOGNAME": self.user}
        if self.ssh:
            if self._home is None:
                self._home = self.transport.home()
            env["HOME"] = self._home
        env.update(request.env)
        return env

    def submit_request(self, request: JobRequest) -> SubmitRequest:
        """The submit fields for a job request (no connection needed)."""
        spec = request.spec
        script = self.render(request)
        common: dict[str, Any] = {"script": script, "environment": self._environment(request),
                                  "comment": request.tag, "append_output": True}
        if spec.script is None:
            stdout, stderr = self._outputs(request)
            workdir = request.job_dir if self.ssh else self.workdir()
            return SubmitRequest(name=request.tag, workdir=workdir, stdout=stdout, stderr=stderr,
                                 **common, **resource_fields(spec.resources))
        fields, ignored = directive_fields(spec.script)
        if ignored:
            log.warning("slurm-rest: slurmrestd reads no #SBATCH line and these have no submit field "
                        "here, so they are not applied: %s", " ".join(ignored))
        workdir = fields.pop("workdir", None) or (request.job_dir if self.ssh else self.workdir())
        if not workdir.startswith("/"):
            workdir = f"{request.job_dir if self.ssh else self.workdir()}/{workdir}"
        stdout = _absolute(fields.pop("stdout", None) or "slurm-%j.out", workdir)
        stderr = fields.pop("stderr", None)
        return SubmitRequest(name=fields.pop("name", None) or request.tag, workdir=workdir, stdout=stdout,
                             stderr=_absolute(stderr, workdir) if stderr else None, **common, **fields)

    def submit(self, request: JobRequest) -> JobHandle:
        version = self._ensure_version(first=True)
        wanted = self.submit_request(request)
        if self.ssh:
            self.prepare_job_dir(request.job_dir, request.paths.exit_status)
        _, _, body = self._request("POST", api.submit_path(version), "submitting the job",
                                   json=api.submit_body(version, wanted))
        try:
            job_id = api.parse_submit(body)
        except ValueError:
            raise BackendError(f"slurmrestd accepted the job but named no job id: {str(body)[:200]}") from None
        for warning in api.warnings_of(body):
            log.debug("slurmrestd: %s", warning)
        stdout = expand_output_pattern(wanted.stdout, job_id, wanted.name, self.user)
        stderr = expand_output_pattern(wanted.stderr, job_id, wanted.name, self.user) if wanted.stderr else None
        return JobHandle(job_id, request.job_dir, stdout, stderr if stderr != stdout else None)

    # --- status, cancel, find ---------------------------------------------------------------

    def _jobs(self) -> list[RestJob]:
        """Every job slurmctld holds, in one request (unchanged since the last answer: that one)."""
        version = self._ensure_version(first=False)
        since = self._listing[0] if self._listing is not None else None
        _, status, body = self._request("GET", api.jobs_path(version), "listing the jobs",
                                        params=api.jobs_query(version, since))
        if api.unchanged(status, body) and self._listing is not None:
            return self._listing[1]
        jobs = api.parse_jobs(body)
        stamp = api.last_update(body)
        self._listing = (stamp, jobs) if stamp is not None else None
        return jobs

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        version = self._ensure_version(first=False)
        found: dict[str, RestJob] = {}
        listed: list[RestJob] | None = None
        if len(job_ids) == 1:
            problem, _, body = self._request("GET", api.job_path(version, job_ids[0]), "asking for the job",
                                             accept=(Problem.NOT_FOUND,))
            if problem is Problem.OK:
                found = {j.job_id: j for j in api.parse_jobs(body)}
        else:
            listed = self._jobs()
            found = {j.job_id: j for j in listed}
        result = {}
        for job_id in job_ids:
            job = found.get(job_id)
            if job is None:
                result[job_id] = JobStatus(job_id, JobState.UNKNOWN, reason="job no longer known to SLURM")
                continue
            position = None
            if job.base_state == "PENDING":
                position = self._position(job_id, listed)
            result[job_id] = status_of(job, position)
        return result

    def _position(self, job_id: str, listed: list[RestJob] | None) -> int | None:
        """A pending job's place in the queue. It takes the whole list (`GET /jobs`, ~4 kB a
        job): free when a status of many fetched it anyway, else asked at most every
        POSITION_INTERVAL seconds per job (the last answer is repeated in between)."""
        now = time.monotonic()
        if listed is None:
            asked = self._positions.get(job_id)
            if asked is not None and now - asked[0] < POSITION_INTERVAL:
                return asked[1]
            listed = self._jobs()
        position = api.queue_position(listed, job_id)
        self._positions[job_id] = (now, position)
        return position

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        version = self._ensure_version(first=False)
        if len(job_ids) > 1 and api.can_cancel_many(version):
            _, _, body = self._request("DELETE", api.jobs_path(version), "cancelling the jobs",
                                       json=api.kill_jobs_body(job_ids))
            refused = {job_id: error for job_id, error in api.kill_failures(body).items()
                       if error.error_number not in (api.ESLURM_INVALID_JOB_ID, api.ESLURM_ALREADY_DONE)}
            if refused:
                said = "; ".join(f"{job_id}: {error.text()}" for job_id, error in refused.items())
                raise BackendError(f"cancelling the jobs: SLURM refused {said}")
            return
        for job_id in job_ids:  # v0.0.38 cancels one job a request
            self._request("DELETE", api.job_path(version, job_id), f"cancelling job {job_id}",
                          accept=(Problem.NOT_FOUND,))

    def find(self, request: JobRequest) -> JobHandle | None:
        self._ensure_version(first=True)
        user = self.user
        tagged = [j for j in self._jobs() if request.tag in (j.comment, j.name) and j.user_name in ("", user)]
        if not tagged:
            return None
        job = max(tagged, key=lambda j: int(j.job_id))
        if request.spec.script is None:
            stdout, stderr = self._outputs(request)
        else:
            stdout = expand_output_pattern(job.standard_output, job.job_id, job.name, user)
            stderr = expand_output_pattern(job.standard_error, job.job_id, job.name, user)
        return JobHandle(job.job_id, request.job_dir, stdout, stderr if stderr and stderr != stdout else None)

    def where(self, handle: JobHandle) -> str:
        return f"{handle.stdout} (stderr: {handle.stderr})" if handle.stderr else handle.stdout

    def step_argv(self, handle: JobHandle, command: Sequence[str], tty: bool) -> list[str]:
        """A step beside the payload's over SSH, as slurm-ssh (`--overlap`: no new resources)."""
        return ["srun", f"--jobid={handle.job_id}", "--overlap", *(["--pty"] if tty else []),
                *(command or ["bash", "-l"])]

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "http_requests": self.http_requests, "tokens_minted": self.tokens_minted}

    def close(self) -> None:
        self.http.close()
        super().close()


def status_of(job: RestJob, position: int | None = None) -> JobStatus:
    """A slurmrestd job as the life cycle sees it (the states as squeue names them)."""
    state = ACTIVE_STATES.get(job.state) or FINAL_STATES.get(job.state) or JobState.UNKNOWN
    start = None
    if job.start_time:
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(job.start_time))
    reason = "" if job.reason in ("None", "(null)") else job.reason
    return JobStatus(
        job_id=job.job_id,
        state=state,
        raw_state=job.state,
        reason=reason,
        exit_code=job.exit_code if state.ended else None,
        signal=job.signal if state.ended else None,
        start_estimate=start,
        queue_position=position if state is JobState.PENDING else None,
        node=job.node,
        payload_ended=job.state == "COMPLETING" or "COMPLETING" in job.flags,
        requeued=job.restarts > 0 and state is JobState.PENDING,
    )


def _absolute(path: str, directory: str) -> str:
    return path if path.startswith("/") else f"{directory}/{path}"


def _reason(exc: Exception) -> str:
    """requests' exception text names the URL and its cause; keep the cause."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "No route to host", "timed out", "Network is unreachable"):
        if marker in text:
            return marker
    return _short(exc)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"
