"""SLURM through its command-line tools (sbatch, scontrol, squeue, scancel) on any transport.

Without accounting (`sacct` off, common on small sites) a finished job stays visible in
`scontrol show job` for MinJobAge seconds, long enough for the connector to read its end.
One `scontrol show job` per monitoring period is the whole load the connector puts on
slurmctld while a job runs; output and the end marker are read from files.
"""

from __future__ import annotations

import re

from connector.backends.base import Backend, JobState, JobStatus
from connector.errors import BackendError, TransientError
from connector.render import JobPaths
from connector.transport.base import CommandResult

_FIELD_START = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")
_TRANSIENT = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted",
    "slurm_load_jobs error: Unable",
    "Connection refused",
)

ACTIVE_STATES = {
    "PENDING": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "CONFIGURING": JobState.RUNNING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
}
FINAL_STATES = {
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "BOOT_FAIL": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE,
}


def parse_scontrol_record(text: str) -> dict[str, str]:
    """`Key=Value Key=Value …` (one-line form, `-o`) into a dict; values may hold `=`."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    starts = list(_FIELD_START.finditer(line))
    record: dict[str, str] = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(line)
        record.setdefault(match.group(1), line[match.end() : end].strip())
    return record


def status_from_record(job_id: str, record: dict[str, str]) -> JobStatus:
    raw = record.get("JobState", "UNKNOWN").split()[0].rstrip("+")
    state = ACTIVE_STATES.get(raw) or FINAL_STATES.get(raw) or JobState.UNKNOWN
    code: int | None = None
    signal: int | None = None
    exit_code = record.get("ExitCode", "")
    if ":" in exit_code:
        first, second = exit_code.split(":", 1)
        if first.isdigit() and second.isdigit():
            code, signal = int(first), int(second)
    start = record.get("StartTime")
    return JobStatus(
        job_id=job_id,
        state=state,
        raw_state=raw,
        reason=record.get("Reason", ""),
        exit_code=code,
        signal=signal,
        start_estimate=start if start not in (None, "", "Unknown", "None") else None,
        node=record.get("BatchHost") or None,
    )


class SlurmBackend(Backend):
    """What SLURM needs, independent of how its commands are reached."""

    def _scheduler(self, argv: list[str]) -> CommandResult:
        """Every call that reaches slurmctld goes through here, so it can be counted."""
        self.scheduler_calls += 1
        return self.transport.run(argv)

    def _check(self, argv: list[str], result: CommandResult) -> CommandResult:
        if result.ok:
            return result
        text = result.stderr + result.stdout
        if any(marker in text for marker in _TRANSIENT):
            raise TransientError(result.describe(argv))
        if result.returncode == 127:
            raise BackendError(f"{argv[0]} is not installed on the HPC side (`{argv[0]}` not found)")
        raise BackendError(result.describe(argv))

    def submit(self, script: str, paths: JobPaths, env_file: bytes, identity_args: list[str]) -> str:
        transport = self.transport
        # one round trip: the job dir, and no end marker left by an earlier job in it
        prepare = ["sh", "-c", 'mkdir -p -m 700 -- "$1" && rm -f -- "$2"', "sh", paths.job_dir, paths.exit_status]
        result = transport.run(prepare)
        if not result.ok:
            raise TransientError(f"cannot prepare {paths.job_dir}: {result.describe(prepare)}")
        transport.write_file(paths.env_file, env_file, 0o600)
        transport.write_file(paths.script, script.encode(), 0o700)
        argv = ["sbatch", "--parsable", *identity_args, paths.script]
        result = self._check(argv, self._scheduler(argv))
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return job_id

    def status(self, job_id: str) -> JobStatus:
        argv = ["scontrol", "show", "job", "-o", job_id]
        result = self._scheduler(argv)
        if not result.ok and "Invalid job id" in (result.stderr + result.stdout):
            return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason="job no longer known")
        self._check(argv, result)
        status = status_from_record(job_id, parse_scontrol_record(result.stdout))
        if status.state is JobState.PENDING:
            position = self._queue_position(job_id)
            status = JobStatus(**{**status.__dict__, "queue_position": position})
        return status

    def _queue_position(self, job_id: str) -> int | None:
        argv = ["squeue", "-h", "-t", "PENDING", "-o", "%i", "--sort=-p,i"]
        result = self._scheduler(argv)
        if not result.ok:
            return None
        ids = result.stdout.split()
        return ids.index(job_id) + 1 if job_id in ids else None

    def cancel(self, job_id: str) -> None:
        argv = ["scancel", job_id]
        result = self._scheduler(argv)
        if not result.ok and "Invalid job id" not in result.stderr + result.stdout:
            self._check(argv, result)

    def find(self, job_name: str) -> str | None:
        argv = ["squeue", "-h", "--states=all", f"--name={job_name}", "-o", "%i"]
        result = self._check(argv, self._scheduler(argv))
        ids = [int(token) for token in result.stdout.split() if token.isdigit()]
        return str(max(ids)) if ids else None
