"""The mirror job's life: submit or reattach, follow, stream, end (or cancel on a signal).

Two clocks: a cheap one (every tail interval, 0.25 s by default: new output lines and the end
marker file, read in one request) that costs the scheduler nothing, and the monitoring period,
at which the scheduler itself is asked. When the end marker appears the scheduler is asked at
once, so a pod ends well under a second after its job without polling slurmctld that often.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TypeVar

from connector import outcome as outcomes
from connector import record as records
from connector.backends.base import Backend, Capability, JobHandle, JobRequest, JobState, JobStatus
from connector.errors import AuthError, ConnectorError, SpecError, TransientError, UnreachableError
from connector.follower import Handoff
from connector.readiness import ReadyPort
from connector.spec import DEFAULT_POLL_INTERVAL, JobSpec
from connector.staging import stage_in, stage_out
from connector.state import JobRecord, StateStore
from connector.transport.base import READ_LIMIT

log = logging.getLogger("hpc-connector")
T = TypeVar("T")

# Not forwarded from envFrom: they describe the connector's container (its image's ENV, the
# kubelet's service links), not what the pod asked for. docs/annotations.md lists them.
_SYSTEM_ENV = {"PATH", "HOME", "HOSTNAME", "TERM", "PWD", "SHLVL", "LANG", "OLDPWD", "_", "USER",
               "GPG_KEY", "PYTHON_VERSION", "PYTHON_SHA256", "PYTHON_PIP_VERSION"}
_SYSTEM_PREFIXES = ("KUBERNETES_", "HPC_OFFLOAD_", "PYTHON", "LC_", "SSL_", "PIP_")
_SERVICE_SUFFIXES = ("_SERVICE_HOST", "_SERVICE_PORT", "_PORT")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Never forwarded, even when the pod names them: they configure the HPC side's own shell, loader
# and scheduler, which run the rendered script before and around the payload (a pod `PATH` or
# `LD_PRELOAD` would act on `srun`/`singularity` themselves, `BASH_ENV` would run a file
# before the script, `SHELLOPTS=xtrace` would print the env file, values included, into the
# job's output, `SLURM_*` would steer the job's own `srun`). The HPC side sets its own.
_HPC_SIDE_ENV = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "HOSTNAME", "SHLVL",
                 "_", "IFS", "CDPATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4",
                 "GLOBIGNORE", "PROMPT_COMMAND", "BASH_XTRACEFD"}
_HPC_SIDE_PREFIXES = ("LD_", "SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SGE_")

CANCEL_TIMEOUT = 60.0
# One request to the login node a tick (output and end marker read together): at 0.25 s that
# is the load two separate reads every 0.5 s used to put on sshd, for half the delay.
DEFAULT_TAIL_INTERVAL = 0.25
MAX_BACKOFF = 30.0
DEFAULT_SUBMIT_TIMEOUT = 600.0  # profile `submit_timeout`: then the pod ends "unreachable"
TAIL_LINES = 10  # of the job's stderr kept for the termination message


def job_environment(spec: JobSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the HPC job gets: the container's env as the kubelet resolved it (`environ`
    is the copy the connector took of it at start, never its own). Only names a shell accepts
    are forwarded (Kubernetes allows `db-password`; bash would print such a line, value
    included, into the job's output), and none that configures the HPC side itself
    (`_HPC_SIDE_ENV`); the others are named once in the log, never their values."""
    env: dict[str, str] = {}
    if spec.env_prefix:  # only the container's own variables, under their own names
        prefix = spec.env_prefix
        environ = {name[len(prefix):]: value for name, value in environ.items() if name.startswith(prefix)}
    if spec.env_from:
        for name, value in environ.items():
            if name in _SYSTEM_ENV or name.startswith(_SYSTEM_PREFIXES):
                continue
            if name.endswith(_SERVICE_SUFFIXES) or "_PORT_" in name:
                continue
            env[name] = value
    for name in spec.env_passthrough:
        if name in environ:
            env[name] = environ[name]
    env.update(spec.env)
    skipped = sorted(name for name in env if not _ENV_NAME.fullmatch(name))
    if skipped:
        shown = ", ".join(repr(name)[:80] for name in skipped[:10])
        log.warning("not forwarded to the HPC job (not a shell variable name): %s", shown)
    reserved = sorted(name for name in env if name in _HPC_SIDE_ENV or name.startswith(_HPC_SIDE_PREFIXES))
    if reserved:
        log.warning("not forwarded to the HPC job (the HPC side sets its own): %s", ", ".join(reserved[:10]))
    return {name: value for name, value in env.items()
            if _ENV_NAME.fullmatch(name) and name not in reserved}


@dataclass
class Timing:
    """The two clocks (seconds)."""

    period: float = DEFAULT_POLL_INTERVAL
    tick: float = DEFAULT_TAIL_INTERVAL
    fast: float = 0.2  # while an end is imminent or a cancel is waiting
    submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT  # transient faults before anything runs

    @classmethod
    def for_period(cls, period: float, tail_interval: float = DEFAULT_TAIL_INTERVAL,
                   submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT) -> Timing:
        """`tail_interval` (profile): how often output and the end marker are read; each tick
        is one request to the login node's sshd, none to slurmctld."""
        return cls(period=period, tick=min(max(tail_interval, 0.1), period), submit_timeout=submit_timeout)


class Connector:
    """Drives one HPC job for one pod; `run()` returns the container's exit code."""

    def __init__(
        self,
        spec: JobSpec,
        backend: Backend,
        state: StateStore,
        timing: Timing,
        out: BinaryIO,
        termination_log: str | None = None,
        environ: Mapping[str, str] | None = None,
        err: BinaryIO | None = None,
        ready: ReadyPort | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.state = state
        self.timing = timing
        self.out = out  # the job's stdout goes here (the container's stdout)
        self.err = err  # the job's stderr goes here (None: into `out`)
        self.records = None if spec.logs == "job-only" else err  # the state records (record.py)
        self.ready = ready or ReadyPort(None)
        self.termination_log = termination_log
        self.environ = dict(os.environ if environ is None else environ)
        self.record: JobRecord | None = None
        self.partial = {"stdout": b"", "stderr": b""}
        self.signum: int | None = None
        self._wake = threading.Event()
        self._outage_since: float | None = None
        self._backoff = 1.0
        self.polls = 0
        self.stderr_tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self.handoff = handoff  # relay mode: the lean follower takes over the steady state
        if handoff is not None:
            self.stderr_tail.extend(handoff.take_tail())
            self.signum = handoff.cancel  # it sent the cancel; the end is waited for here
        caps = backend.capabilities
        self.logs = "stream" if spec.logs == "job-only" else spec.logs  # what the backend allows
        if self.logs == "stream" and Capability.STREAM_OUTPUT not in caps:
            self.logs = "end" if Capability.FINAL_OUTPUT in caps else "none"
        elif self.logs == "end" and not caps & (Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT):
            self.logs = "none"

    # --- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        # the lean follower hands the job back with them blocked (a signal meanwhile is pending)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self._wake.set()

    def _sleep(self, seconds: float) -> None:
        """Sleep that a signal cuts short."""
        if self.signum is None:
            self._wake.wait(seconds)

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> int:
        try:
            result = self._run()
        except ConnectorError as exc:
            log.error("%s", exc.message)
            result = outcomes.Outcome(exc.exit_code, exc.reason, exc.message,
                                      self.record.job_id if self.record else None)
        finally:
            self.ready.close()
            stats = " ".join(f"{k}={v}" for k, v in self.backend.stats().items())
            log.debug("stats: %s polls=%d", stats, self.polls)
            self.backend.close()
        if self.stderr_tail and not result.stderr_tail:
            tail = b"".join(self.stderr_tail).decode("utf-8", "replace")
            result = replace(result, stderr_tail=tail)
        result.write(self.termination_log)
        records.write(self.records, job=result.job_id, state=result.state or "ERROR", reason=result.reason,
                      exit=result.exit_code)
        log.info("exit %d (%s): %s", result.exit_code, result.reason, result.message)
        return outcomes.exit_code_for(result)

    def _run(self) -> outcomes.Outcome:
        if (self.spec.stage_in or self.spec.stage_out) and Capability.FILES not in self.backend.capabilities:
            raise SpecError(f"stage-in/stage-out: backend {self.backend.type_name} cannot copy files; "
                            "use a backend with file access (e.g. slurm-ssh) or remove the staging")
        record = self._retry(self._attach_or_submit, "submitting",
                             deadline=time.monotonic() + self.timing.submit_timeout)
        if record is None:  # stopped before anything was submitted
            assert self.signum is not None
            return outcomes.interrupted(self.signum, None, cancelled=False)
        self.record = record
        if self.spec.logs not in (self.logs, "job-only"):
            self._say_where_output_is()
        return self._follow()

    def _say_where_output_is(self) -> None:
        assert self.record is not None
        where = self.backend.where(self.record.handle)
        if self.logs == "end":
            log.info("backend %s gives a job's output only at its end; it is printed then (%s)",
                     self.backend.type_name, where)
        else:
            log.info("backend %s cannot read a job's output from here; it is at %s on the HPC side",
                     self.backend.type_name, where)

    def _request(self, run: int = 0) -> JobRequest:
        return JobRequest(self.spec, self._job_dir(run), job_environment(self.spec, self.environ), run)

    def _attach_or_submit(self) -> JobRecord | None:
        saved = self.state.load()
        run = 0
        if saved is not None and not saved.ended:
            resumed = self.handoff is not None and self.handoff.returned is not None
            (log.debug if resumed else log.info)("reattaching to HPC job %s (state file)", saved.job_id)
            return saved
        if saved is not None:  # the container restarted after its job ended: run it again
            run = saved.run + 1
            log.info("HPC job %s ended before this restart: submitting run %d as a new job",
                     saved.job_id, run + 1)
        request = self._request(run)
        if self.spec.pod.uid:
            found = self.backend.find(request)
            if found is not None:
                found = self._handle(found, request)
                log.info("reattaching to HPC job %s (found by its tag %s)", found.job_id, request.tag)
                record = JobRecord.of(found, self.backend.type_name, run)
                self.state.save(record)
                return record
        if self.signum is not None:
            return None
        return self._submit(request)

    def _job_dir(self, run: int = 0) -> str:
        suffix = self.spec.pod.uid or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        again = f"-r{run}" if run else ""
        return f"{self.backend.workdir()}/hpco-{suffix}{again}"

    def _submit(self, request: JobRequest) -> JobRecord:
        started = time.monotonic()
        if self.spec.stage_in:  # submit makes the job dir itself; staging needs it first
            files = self.backend.files()
            files.mkdir(request.job_dir, 0o700)
            stage_in(files, self.spec.stage_in, request.job_dir)
        handle = self._handle(self.backend.submit(request), request)
        record = JobRecord.of(handle, self.backend.type_name, request.run)
        self.state.save(record)
        records.write(self.records, job=handle.job_id, state="SUBMITTED")
        log.info("submitted HPC job %s (%s, %.2fs) in %s", handle.job_id, self.backend.type_name,
                 time.monotonic() - started, handle.job_dir)
        return record

    def _handle(self, handle: JobHandle, request: JobRequest) -> JobHandle:
        """The handle this connector follows: the job's, or (a whole pod) its part's."""
        return handle.for_part(request.part)

    # --- following --------------------------------------------------------------------------

    def _follow(self) -> outcomes.Outcome:
        assert self.record is not None
        last_query = 0.0
        last_status = self.handoff.last_status(self.record.job_id) if self.handoff else None
        imminent_until = 0.0
        payload_exit: int | None = None
        ticking = Capability.STREAM_OUTPUT in self.backend.capabilities
        while True:
            if self.signum is not None:
                return self._cancel()
            now = time.monotonic()
            due = now - last_query >= self.timing.period or now < imminent_until
            printed, marker = 0, None
            if ticking:
                want_marker = payload_exit is None and self.spec.script is None
                printed, marker = self._safe(functools.partial(self._tick, want_marker)) or (0, None)
            if marker is not None:
                payload_exit = marker
                due = True
                imminent_until = now + 10.0
            if due:
                status = self._safe(lambda: self.backend.status(self.record.job_id))  # type: ignore[union-attr]
                last_query = now
                if status is not None and status.state is JobState.UNKNOWN:
                    status = self._resolve_lost(status)
                if status is not None:
                    self.polls += 1
                    self._report(last_status, status)
                    last_status = status
                    end = self._end(status, payload_exit)
                    if end is not None:
                        return self._finish(end)
                    if (self.handoff is not None and payload_exit is None and now >= imminent_until
                            and self._outage_since is None and self.logs == "stream" and self.signum is None):
                        self.handoff.offer(self.backend, self.record, status)  # returns only if it cannot
            if printed and last_status is not None and last_status.state is JobState.PENDING:
                last_query = 0.0  # output while we thought it pending: it runs; ask now
            wait = self.timing.fast if now < imminent_until else self.timing.tick
            self._sleep(wait if ticking else self.timing.period)

    def _end(self, status: JobStatus, payload_exit: int | None) -> JobStatus | None:
        """How the job ended, once it did: the manager's word, or the end marker while the
        manager only cleans up. None while it goes on."""
        if status.state.ended:
            return status
        if payload_exit is not None and status.payload_ended:
            return _completed(status, payload_exit)
        return None

    def _resolve_lost(self, status: JobStatus) -> JobStatus:
        """A job the manager no longer knows (aged out during a long outage): its end marker,
        where a rendered script left one, still tells how it ended."""
        if Capability.STREAM_OUTPUT not in self.backend.capabilities or self.spec.script is not None:
            return status
        assert self.record is not None
        marker = self._safe(lambda: self.backend.progress(self.record.handle, None, None, True))  # type: ignore[union-attr]
        if marker is None or marker.exit_status is None:
            return status
        log.info("HPC job %s is no longer known to the scheduler; its end marker says exit %d",
                 status.job_id, marker.exit_status)
        return _completed(status, marker.exit_status)

    def _report(self, previous: JobStatus | None, status: JobStatus) -> None:
        self.ready.set(status.state is JobState.RUNNING)
        same_state = previous is not None and previous.state == status.state
        if same_state and (status.state is not JobState.PENDING or (
                previous.reason == status.reason  # type: ignore[union-attr]
                and previous.queue_position == status.queue_position)):  # type: ignore[union-attr]
            return
        if not status.state.ended:
            records.write(self.records, job=status.job_id, state=status.state.value, reason=status.reason or None,
                          position=status.queue_position, start=status.start_estimate, node=status.node)
        if status.state is JobState.PENDING:
            where = f", position {status.queue_position} in queue" if status.queue_position else ""
            start = f", estimated start {status.start_estimate}" if status.start_estimate else ""
            reason = f" ({status.reason})" if status.reason not in ("", "None") else ""
            again = " again (requeued)" if status.requeued else ""
            log.info("HPC job %s pending%s%s%s%s", status.job_id, again, reason, where, start)
        elif status.state is JobState.RUNNING:
            on = f" on {status.node}" if status.node else ""
            log.info("HPC job %s running%s", status.job_id, on)

    def _finish(self, status: JobStatus) -> outcomes.Outcome:
        assert self.record is not None
        if self.logs == "stream":
            self._retry(lambda: self._pump_logs(final=True), "reading the job output")
        elif self.logs == "end":
            self._retry(self._print_all_logs, "reading the job output")
        if self.spec.stage_out:
            self._retry(lambda: stage_out(self.backend.files(), self.spec.stage_out,
                                          self.record.job_dir), "staging out")  # type: ignore[union-attr]
        self._safe(lambda: self.backend.cleanup(self.record.handle))  # type: ignore[union-attr]
        self.record.ended = True  # a restarted container runs the command again
        self.state.save(self.record)
        return outcomes.outcome_of(status)

    def _cancel(self) -> outcomes.Outcome:
        assert self.record is not None and self.signum is not None
        job_id = self.record.job_id
        log.info("stopping: cancelling HPC job %s", job_id)
        deadline = time.monotonic() + CANCEL_TIMEOUT
        cancelled = False
        while time.monotonic() < deadline:
            try:
                if not cancelled:
                    self.backend.cancel(job_id)
                    cancelled = True
                status = self.backend.status(job_id)
                if status.state.ended:
                    log.info("HPC job %s ended %s", job_id, status.raw_state or status.state.value)
                    if self.logs == "stream":
                        self._safe(lambda: self._pump_logs(final=True))
                    self._safe(lambda: self.backend.cleanup(self.record.handle))  # type: ignore[union-attr]
                    if status.state not in (JobState.CANCELLED, JobState.UNKNOWN):
                        return outcomes.outcome_of(status)  # it ended on its own meanwhile
                    return outcomes.interrupted(self.signum, job_id, cancelled=True)
            except TransientError as exc:
                log.warning("cancel of HPC job %s: %s; retrying", job_id, exc.message)
                time.sleep(1.0)
                continue
            time.sleep(self.timing.fast / 2)
        result = outcomes.interrupted(self.signum, job_id, cancelled=False)
        return outcomes.Outcome(result.exit_code, "CancelTimeout",
                                f"HPC job {job_id} still queued {CANCEL_TIMEOUT:.0f}s after the cancel",
                                job_id, None)

    # --- output -----------------------------------------------------------------------------

    def _streams(self) -> tuple[str, ...]:
        assert self.record is not None
        return ("stdout", "stderr") if self.record.handle.stderr else ("stdout",)

    def _tick(self, want_marker: bool) -> tuple[int, int | None]:
        """One round trip a tick: new output (when streaming) and the end marker (until seen).
        Returns the bytes of output read and the marker."""
        assert self.record is not None
        stream = self.logs == "stream"
        has_err = "stderr" in self._streams()
        got = self.backend.progress(self.record.handle,
                                    self._read_offset("stdout") if stream else None,
                                    self._read_offset("stderr") if stream and has_err else None,
                                    want_marker)
        printed = self._take("stdout", got.stdout) + self._take("stderr", got.stderr)
        if len(got.stdout) >= READ_LIMIT or len(got.stderr) >= READ_LIMIT:  # more is waiting
            printed += self._pump_logs()
        return printed, got.exit_status

    def _read_offset(self, stream: str) -> int:
        assert self.record is not None
        done = self.record.log_offset if stream == "stdout" else self.record.err_offset
        return done + len(self.partial[stream])

    def _take(self, stream: str, chunk: bytes) -> int:
        """Print the complete lines; keep a partial last line until its end arrives."""
        if chunk:
            pending = self.partial[stream] + chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                self._emit(stream, pending[:cut])
                pending = pending[cut:]
            self.partial[stream] = pending
        return len(chunk)

    def _pump_logs(self, final: bool = False) -> int:
        """Print complete new lines until none are waiting; the saved offsets count only
        complete lines."""
        assert self.record is not None
        read = 0
        for stream in self._streams():
            while True:
                chunk = self.backend.read_output(self.record.handle, stream, self._read_offset(stream))
                read += self._take(stream, chunk)
                if len(chunk) < READ_LIMIT:
                    break
            if final and self.partial[stream]:
                self._emit(stream, self.partial[stream] + b"\n", consumed=len(self.partial[stream]))
                self.partial[stream] = b""
        return read

    def _emit(self, stream: str, data: bytes, consumed: int | None = None) -> None:
        """The offset is saved before the lines are written: a connector killed in between
        (SIGKILL, OOM) reattaches after them, so no line is ever printed twice."""
        assert self.record is not None
        count = len(data) if consumed is None else consumed
        if stream == "stdout":
            self.record.log_offset += count
        else:
            self.record.err_offset += count
        self.state.save(self.record)
        if stream == "stderr":
            self.stderr_tail.extend(line[-300:] for line in data.splitlines(keepends=True))
        sink = self.out if stream == "stdout" or self.err is None else self.err
        sink.write(data)
        sink.flush()

    def _print_all_logs(self) -> None:
        assert self.record is not None
        self.record.log_offset = self.record.err_offset = 0
        self.partial = {"stdout": b"", "stderr": b""}
        self._pump_logs(final=True)

    # --- faults -----------------------------------------------------------------------------

    def _safe(self, action: Callable[[], T]) -> T | None:
        """One attempt; a transient fault is logged once per outage and backs off."""
        try:
            value = action()
        except (TransientError, AuthError) as exc:  # a running job is followed through both
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("lost contact with the HPC side: %s; retrying", exc.message)
            self._sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return None
        if self._outage_since is not None:
            log.info("contact with the HPC side restored after %.0fs",
                     time.monotonic() - self._outage_since)
            self._outage_since = None
            self._backoff = 1.0
        return value

    def _retry(self, action: Callable[[], T], what: str, deadline: float | None = None) -> T:
        """Retry until it works, a signal arrives (then the caller sees the signal) or the
        deadline passes (then the HPC side is reported unreachable, with the last error)."""
        while True:
            try:
                value = action()
            except TransientError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise UnreachableError(
                        f"{what}: the HPC side stayed unreachable for {self.timing.submit_timeout:.0f}s "
                        f"(profile submit_timeout); last error: {exc.message}") from None
                log.warning("%s failed: %s; retrying in %.0fs", what, exc.message, self._backoff)
                self._sleep(self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
                if self.signum is not None and self.record is None:
                    return None  # type: ignore[return-value]
                continue
            self._backoff = 1.0
            return value


def _completed(status: JobStatus, code: int) -> JobStatus:
    """A job whose script has exited (its exit status is written) and that the manager is only
    cleaning up after: its end is known, so the pod need not wait for the epilog."""
    state = JobState.COMPLETED if code == 0 else JobState.FAILED
    return JobStatus(job_id=status.job_id, state=state, raw_state=state.value, reason=status.reason,
                     exit_code=code, signal=0, node=status.node)


def read_pod_info(directory: Path) -> dict[str, str]:
    """uid/name/namespace from the downward-API files the webhook mounts beside the spec."""
    info: dict[str, str] = {}
    for key in ("uid", "name", "namespace"):
        path = directory / f"pod-{key}"
        if path.exists():
            info[key] = path.read_text().strip()
        elif os.environ.get(f"HPC_OFFLOAD_POD_{key.upper()}"):
            info[key] = os.environ[f"HPC_OFFLOAD_POD_{key.upper()}"]
    return info
