"""SLURM through its command-line tools (sbatch, squeue, scancel) on any shell transport.

One `squeue` answers for every job of a session (state, reason, exit code, node, restarts,
where its output goes), so following N jobs costs one slurmctld request per period; `scancel`
takes them all at once. The job's environment reaches sbatch on a file descriptor
(`--export-file=3`, after the login environment): no env file is ever written on the HPC
side. Without accounting a finished job stays visible for MinJobAge seconds, long enough for
the connector to read its end; with it, `sacct` answers for jobs slurmctld forgot.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from connector.backends.base import Capability, JobHandle, JobRequest, JobState, JobStatus
from connector.backends.shell import ShellBackend
from connector.backends.slurm_options import sbatch_options
from connector.errors import BackendError
from connector.render import JobPaths, env_export_file, payload_lines, render_batch_script

TRANSIENT = (
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
# squeue -O fields, each ended by a separator no field value contains
_SEP = "\x1f"
FIELDS = ("JobID", "State", "Reason", "exit_code", "BatchHost", "StartTime", "RestartCnt",
          "Comment", "STDOUT", "STDERR")
_FORMAT = ",".join(f"{name}:{_SEP}" for name in FIELDS)


def queue_listing_argv(job_ids: Sequence[str] | None = None, *, mine: bool = False) -> list[str]:
    """One `squeue` for these jobs (or all of the user's), every field we read."""
    argv = ["squeue", "--noheader", "--states=all", f"--Format={_FORMAT}"]
    if job_ids is not None:
        argv.append(f"--jobs={','.join(job_ids)}")
    if mine:
        argv.append("--me")
    return argv


def parse_queue_listing(text: str) -> list[dict[str, str]]:
    """squeue's `-O` lines (fields ended by the separator) as dicts keyed by FIELDS."""
    records = []
    for line in text.splitlines():
        values = [value.strip() for value in line.split(_SEP)]
        if len(values) >= len(FIELDS):
            records.append(dict(zip(FIELDS, values, strict=False)))
    return records


def status_from_listing(record: dict[str, str], position: int | None = None) -> JobStatus:
    raw = record.get("State", "UNKNOWN").split()[0].rstrip("+")
    state = ACTIVE_STATES.get(raw) or FINAL_STATES.get(raw) or JobState.UNKNOWN
    code, signal = _exit_code(record.get("exit_code", ""))
    start = record.get("StartTime", "")
    restarts = record.get("RestartCnt", "0")
    return JobStatus(
        job_id=record["JobID"],
        state=state,
        raw_state=raw,
        reason=record.get("Reason", "") if record.get("Reason") not in ("None", "(null)") else "",
        exit_code=code if state.ended else None,
        signal=signal if state.ended else None,
        start_estimate=_known(start),
        queue_position=position if state is JobState.PENDING else None,
        node=_known(record.get("BatchHost", "")),
        payload_ended=raw == "COMPLETING",
        requeued=restarts.isdigit() and int(restarts) > 0 and state is JobState.PENDING,
    )


def _known(text: str) -> str | None:
    """squeue's placeholders for "not yet" (`n/a`, `N/A`, `Unknown`, `None`) as None."""
    return None if text.strip().lower() in ("", "n/a", "unknown", "none", "(null)") else text.strip()


def _exit_code(text: str) -> tuple[int | None, int | None]:
    """(code, signal) from squeue's `exit_code`: the raw wait status (1792 = exit 7, 9 = killed
    by signal 9), or `7:0` as scontrol prints it."""
    first, sep, second = text.partition(":")
    if sep and first.isdigit() and second.isdigit():
        return int(first), int(second)
    if not text.isdigit():
        return None, None
    status = int(text)
    if status & 0x7F:
        return 0, status & 0x7F
    return (status >> 8) & 0xFF, 0


class SlurmBackend(ShellBackend):
    """What SLURM needs, independent of how its commands are reached."""

    _no_accounting = False

    capabilities = ShellBackend.capabilities | Capability.SHELL

    def step_argv(self, handle: JobHandle, command: Sequence[str], tty: bool) -> list[str]:
        """A step beside the payload's, in the same allocation (`--overlap`: no new resources)."""
        return ["srun", f"--jobid={handle.job_id}", "--overlap", *(["--pty"] if tty else []),
                *(command or ["bash", "-l"])]

    def render(self, request: JobRequest) -> str:
        """The batch script: `#SBATCH` lines for the resources, then the shared payload."""
        spec = request.spec
        if spec.script is not None:
            return spec.script
        directives = [f"#SBATCH {option}" for option in sbatch_options(spec.resources)]
        res = spec.resources
        several = (res.tasks or 1) > 1 or (res.nodes or 1) > 1
        # once per task (MPI-style); enroot's own srun already is
        launcher = ["srun", "--kill-on-bad-exit=1"] if several and spec.effective_runtime() != "enroot" else []
        body = payload_lines(spec, request.paths, request.env.keys(), self.profile.setting("image"),
                             launcher=launcher)
        return render_batch_script(directives, body)

    def identity_args(self, request: JobRequest) -> list[str]:
        """What sbatch adds on its command line. A rendered script gets its name, output files
        and directory from us; a verbatim script keeps its own and is found by its comment."""
        paths = request.paths
        args = [f"--comment={request.tag}", "--export-file=3"]
        if request.spec.script is None:
            args += [f"--job-name={request.tag}", f"--output={paths.output}", f"--error={paths.error}",
                     "--open-mode=append"]
        return [*args, f"--chdir={paths.job_dir}"]

    def submit(self, request: JobRequest) -> JobHandle:
        paths = request.paths
        script = self.render(request)
        self.prepare_job_dir(paths.job_dir, paths.exit_status)
        self.transport.write_file(paths.script, script.encode(), 0o700)
        sbatch = shlex.join(["sbatch", "--parsable", *self.identity_args(request), paths.script])
        # The environment arrives on stdin and sbatch reads it from fd 3: never a file, never
        # argv. --export-file replaces sbatch's own environment, so the login environment goes
        # first (as sbatch's default --export=ALL would give it) and the pod's overrides it.
        argv = ["sh", "-c", f"{{ env -0; cat; }} | {{ exec {sbatch} 3<&0 </dev/null; }}"]
        result = self.run_checked(argv, TRANSIENT, stdin=env_export_file(request.env))
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        if request.spec.script is None:
            return JobHandle.rendered(job_id, paths.job_dir)
        return self._located(job_id, paths.job_dir)

    def _located(self, job_id: str, job_dir: str) -> JobHandle:
        """A verbatim script's job: its output is where its own directives sent it."""
        records = self._listing([job_id])
        record = records[0] if records else {}
        stdout = record.get("STDOUT") or f"{job_dir}/slurm-{job_id}.out"
        stderr = record.get("STDERR") or None
        return JobHandle(job_id, job_dir, _absolute(stdout, job_dir),
                         _absolute(stderr, job_dir) if stderr and stderr != stdout else None)

    def _listing(self, job_ids: Sequence[str] | None = None, mine: bool = False) -> list[dict[str, str]]:
        argv = queue_listing_argv(job_ids, mine=mine)
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        text = result.stderr + result.stdout
        if not result.ok and "Invalid job id" in text:
            return []  # every job asked for has left the controller
        if not result.ok:
            self.scheduler_calls -= 1  # run_checked counts it again
            self.run_checked(argv, TRANSIENT)
        return parse_queue_listing(result.stdout)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        found = {record["JobID"]: record for record in self._listing(job_ids)}
        missing = [job_id for job_id in job_ids if job_id not in found]
        if missing:  # aged out of the controller: the accounting database still knows
            found.update(self._accounting(missing))
        pending = [job_id for job_id in job_ids
                   if job_id in found and found[job_id]["State"].startswith("PENDING")]
        order = self._pending_order() if pending else []
        result = {}
        for job_id in job_ids:
            if job_id not in found:
                result[job_id] = JobStatus(job_id=job_id, state=JobState.UNKNOWN,
                                           reason="job no longer known to SLURM")
                continue
            position = order.index(job_id) + 1 if job_id in order else None
            result[job_id] = status_from_listing(found[job_id], position)
        return result

    def _accounting(self, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """End states from `sacct` for jobs slurmctld forgot (one request; nothing where the
        site runs without accounting, which is then not asked again)."""
        if self._no_accounting:
            return {}
        argv = ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
                "--format=JobID,State,ExitCode,Reason,NodeList,End"]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if not result.ok:
            self._no_accounting = "disabled" in result.stderr + result.stdout or result.returncode == 127
            return {}
        records = {}
        for line in result.stdout.splitlines():
            fields = line.split("|")
            # a record written while slurmdbd was away reads FAILED 0:0 with End=Unknown until
            # the real one arrives: only a record with an end time is final
            if len(fields) >= 6 and fields[0] in job_ids and fields[5] not in ("Unknown", "None", ""):
                records[fields[0]] = {"JobID": fields[0], "State": fields[1], "exit_code": fields[2],
                                      "Reason": fields[3], "BatchHost": fields[4], "RestartCnt": "0"}
        return records

    def _pending_order(self) -> list[str]:
        """The pending queue in priority order (only asked while one of ours waits)."""
        argv = ["squeue", "--noheader", "--states=PENDING", "--format=%i", "--sort=-p,i"]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        return result.stdout.split() if result.ok else []

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        argv = ["scancel", *job_ids]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if not result.ok and "Invalid job id" not in result.stderr + result.stdout:
            self.scheduler_calls -= 1
            self.run_checked(argv, TRANSIENT)

    def find(self, request: JobRequest) -> JobHandle | None:
        records = [r for r in self._listing(mine=True) if r.get("Comment") == request.tag]
        if not records:
            return None
        newest = max(records, key=lambda r: int(r["JobID"]) if r["JobID"].isdigit() else -1)
        if request.spec.script is None:
            return JobHandle.rendered(newest["JobID"], request.job_dir)
        return self._located(newest["JobID"], request.job_dir)


def _absolute(path: str, job_dir: str) -> str:
    return path if path.startswith("/") else f"{job_dir}/{path}"


__all__ = ["JobPaths", "SlurmBackend"]
