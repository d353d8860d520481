"""Grid Engine (SGE, Son of Grid Engine, OGS) through qsub, qstat, qacct and qdel on a shell
transport.

One `qstat -xml` answers for every job of the session while they are queued or running; a
job that left it is looked up with `qacct -j` (all of them in one round trip), which gives the
exit status and why Grid Engine ended it: `failed 37` is the h_rt limit (the documented TIMEOUT
code), `failed 100` with exit status 128+N a signal. Accounting cannot tell a qdel from a
SIGKILL, so the jobs this backend cancelled (or saw in a deletion state) end as CANCELLED.
A site may flush accounting some seconds after a job left qstat (`reporting_params
accounting_flush_time`, 15 s by default): such a job counts as ending (`payload_ended`) until
its record appears or `accounting_wait` runs out.

The job environment never reaches qsub (`-v` values would show in `qstat -j` to every user):
a rendered script sources a 0600 env file in its job directory and removes it at once.
"""

from __future__ import annotations

import logging
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from connector.backends.base import JobHandle, JobRequest, JobState, JobStatus
from connector.backends.sge_options import qsub_options, site_options
from connector.backends.shell import ShellBackend
from connector.errors import BackendError, ProfileError, TransientError
from connector.render import payload_lines, render_batch_script, render_env_file
from connector.transport.base import CommandResult

log = logging.getLogger("hpc-connector")

TRANSIENT = (
    "unable to contact qmaster",
    "unable to send message to qmaster",
    "commlib error",
    "failed receiving gdi request",
    "got send error",
    "Connection refused",
    "qmaster is still starting up",
)
# qacct `failed` codes (sge_accounting(5) / the shepherd's list) that are not the job's doing
FAILED_TIMEOUT = 37  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
FAILED_AFTER_JOB = 100  # "assumedly after job": the job itself died, e.g. by a signal
DEFAULT_ACCOUNTING_WAIT = 60.0
_RECORD_END = "--hpco-end-of-record--"


@dataclass(frozen=True)
class QueuedJob:
    """One job as `qstat -xml` lists it."""

    job_id: str
    name: str
    state: str  # Grid Engine's letters: qw, hqw, Eqw, r, t, Rr, dr, s, …
    queue: str  # queue@host once running


def parse_qstat(text: str) -> list[QueuedJob]:
    """`qstat -xml` → jobs in the order listed (the pending ones in scheduling order)."""
    root = _xml(text)
    jobs = []
    for item in root.iter("job_list"):
        job_id = (item.findtext("JB_job_number") or "").strip()
        if job_id:
            jobs.append(QueuedJob(job_id, (item.findtext("JB_name") or "").strip(),
                                  (item.findtext("state") or "").strip(),
                                  (item.findtext("queue_name") or "").strip()))
    return jobs


def _xml(text: str) -> ET.Element:
    try:
        # the site's own qstat output; ElementTree resolves no external entities and the
        # expat it uses (>= 2.4.1) refuses entity-expansion bombs
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise TransientError(f"qstat -xml printed no readable XML ({exc})") from None


def parse_qacct(text: str) -> dict[str, str] | None:
    """The last record of `qacct -j` (a rescheduled job has one per run) as key → value."""
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("====="):
            records.append({})
            continue
        key, _, value = line.partition(" ")
        if key and records:
            records[-1][key] = value.strip()
    return records[-1] if records and records[-1] else None


def script_output_options(script: str) -> tuple[str | None, str | None, bool]:
    """(-o path, -e path, -j y) from a script's `#$` lines; the last of each wins, as in qsub.
    A `host:path` list keeps its first path."""
    out = err = None
    merged = False
    for line in script.splitlines():
        if not line.startswith("#$"):
            continue
        try:
            words = shlex.split(line[2:], comments=False)
        except ValueError:
            continue
        for option, value in zip(words, [*words[1:], ""], strict=True):
            path = value.split(",")[0]
            if ":" in path and not path.startswith("/"):
                path = path.split(":", 1)[1]
            if option == "-o":
                out = path or None
            elif option == "-e":
                err = path or None
            elif option == "-j":
                merged = value.lower() in ("y", "yes")
    return out, err, merged


def _error(result: CommandResult, argv: list[str]) -> TransientError | BackendError:
    """What the command said (Grid Engine ends its messages with a bare "Exiting.")."""
    text = (result.stderr + "\n" + result.stdout).strip()
    said = [line.strip() for line in text.splitlines() if line.strip() not in ("", "Exiting.")]
    detail = " / ".join(said[-3:]) or "no output"
    message = f"`{argv[0]}` exited {result.returncode}: {detail}"
    if any(marker in text for marker in TRANSIENT):
        return TransientError(message)
    if result.returncode == 127:
        return BackendError(f"{argv[0]} is not installed on the HPC side (`{argv[0]}` not found)")
    return BackendError(message)


def _first_int(text: str) -> int | None:
    head = text.split()[0] if text.split() else ""
    return int(head) if head.lstrip("-").isdigit() else None


def status_from_queue(job: QueuedJob, position: int | None = None) -> JobStatus:
    """A job qstat still lists: pending or running, in no manager's words."""
    letters = set(job.state)
    running = bool(letters & {"r", "t", "s", "S", "T"})
    reason = ""
    if "d" in letters:
        reason = "being deleted"
    elif "E" in letters:
        reason = f"in error state: `qstat -j {job.job_id}` says why; `qmod -cj {job.job_id}` clears it"
    elif "h" in letters:
        reason = "on hold"
    elif letters & {"s", "S", "T"}:
        reason = "suspended"
    state = JobState.RUNNING if running else JobState.PENDING
    return JobStatus(
        job_id=job.job_id, state=state, raw_state=job.state, reason=reason,
        queue_position=position if state is JobState.PENDING else None,
        node=job.queue.partition("@")[2] or None if running else None,
        requeued="R" in letters and state is JobState.PENDING,
    )


def status_from_accounting(job_id: str, record: dict[str, str], cancelled: bool) -> JobStatus:
    """A job that left qstat, from its accounting record."""
    failed_text = record.get("failed", "0")
    failed = _first_int(failed_text) or 0
    why = failed_text.partition(":")[2].strip()
    code = _first_int(record.get("exit_status", "")) or 0
    raw = f"failed {failed}" if failed else ""  # "" = the neutral COMPLETED / FAILED
    if cancelled and not (failed == 0 and code < 128):
        return JobStatus(job_id, JobState.CANCELLED, "deleted", reason="deleted with qdel",
                         exit_code=code)
    if failed == FAILED_TIMEOUT:
        return JobStatus(job_id, JobState.TIMEOUT, raw, reason=why or "h_rt limit", exit_code=code)
    if failed == FAILED_AFTER_JOB and code > 128:  # the job's shell died by signal N
        return JobStatus(job_id, JobState.FAILED, raw, reason=why, exit_code=0, signal=code - 128)
    if failed and failed != FAILED_AFTER_JOB:  # Grid Engine could not run it (shell, output…)
        return JobStatus(job_id, JobState.FAILED, raw, reason=f"failed {failed}: {why}",
                         exit_code=code, signal=0)
    state = JobState.COMPLETED if code == 0 else JobState.FAILED
    return JobStatus(job_id, state, raw, exit_code=code, signal=0)


class SgeBackend(ShellBackend):
    """What Grid Engine needs, independent of how its commands are reached."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.site = site_options(dict(self.profile.configuration), self.profile.name)
        wait = self.profile.setting("accounting_wait", DEFAULT_ACCOUNTING_WAIT)
        try:
            self.accounting_wait = float(wait)
        except (TypeError, ValueError):
            raise ProfileError(f"profile {self.profile.name!r}: accounting_wait {wait!r} is not "
                               "a number of seconds") from None
        self._cancelled: set[str] = set()  # qdel'd by us, or seen being deleted
        self._started: set[str] = set()  # seen running
        self._missing_since: dict[str, float] = {}

    # --- submit -----------------------------------------------------------------------------

    def render(self, request: JobRequest) -> str:
        """`#$` directives for the resources, then the shared payload (env from a 0600 file)."""
        spec = request.spec
        if spec.script is not None:
            return spec.script
        options, notes = qsub_options(spec.resources, self.site)
        directives = [f"#$ {' '.join(piece)}" for piece in [["-S", self.site.shell], *options]]
        directives += [f"# hpc-offload: {note}" for note in notes]
        body = payload_lines(spec, request.paths, request.env.keys(), self.profile.setting("image"),
                             env_file=True)
        return render_batch_script(directives, body)

    def identity_args(self, request: JobRequest) -> list[str]:
        """The name (the tag: reattach finds the job by it, in qstat and in qacct) and the
        directory; a rendered script also gets its output files from us. A verbatim script's
        own `-N` is overridden by the tag; its output stays where it sends it."""
        paths = request.paths
        args = ["-terse", "-N", request.tag, "-wd", paths.job_dir]
        if request.spec.script is None:
            args += ["-o", paths.output, "-e", paths.error]
        return args

    def submit(self, request: JobRequest) -> JobHandle:
        paths = request.paths
        script = self.render(request)
        if request.spec.script is None:
            for note in qsub_options(request.spec.resources, self.site)[1]:
                log.warning("Grid Engine: %s", note)
        elif request.env:
            log.warning("Grid Engine: a verbatim script gets none of the %d forwarded variables "
                        "(qsub -v would show their values to every user in qstat -j)",
                        len(request.env))
        self.prepare_job_dir(paths.job_dir, paths.exit_status)
        self.transport.write_file(paths.script, script.encode(), 0o700)
        if request.spec.script is None and request.env:
            self.transport.write_file(paths.env_file, render_env_file(request.env), 0o600)
        argv = ["qsub", *self.identity_args(request), paths.script]
        try:
            result = self._checked(argv)
        except BackendError:
            self.cleanup(JobHandle.rendered("", paths.job_dir))
            raise
        job_id = result.stdout.strip().split(".")[0]
        if not job_id.isdigit():
            raise BackendError(f"qsub answered {result.stdout.strip()!r}, not a job id")
        if request.spec.script is None:
            return JobHandle.rendered(job_id, paths.job_dir)
        return self._located(job_id, request)

    def _located(self, job_id: str, request: JobRequest) -> JobHandle:
        """A verbatim script's job: its output is where its own `#$ -o/-e/-j` sent it (Grid
        Engine's default: NAME.oID and NAME.eID in the working directory), read from the
        script itself, so this works as well after the job ended (no scheduler call)."""
        stdout, stderr, merged = script_output_options(request.spec.script or "")
        job_dir, name = request.job_dir, request.tag
        out = self._output_path(stdout, job_dir, name, job_id, "o")
        err = None if merged else self._output_path(stderr, job_dir, name, job_id, "e")
        return JobHandle(job_id, job_dir, out, err if err != out else None)

    def _output_path(self, path: str | None, job_dir: str, name: str, job_id: str, kind: str) -> str:
        default = f"{name}.{kind}{job_id}"
        if not path:
            return f"{job_dir}/{default}"
        for var, value in (("$JOB_ID", job_id), ("$JOB_NAME", name), ("$TASK_ID", "undefined"),
                           ("$HOME", self.transport.home().rstrip("/"))):
            path = path.replace(var, value)
        if not path.startswith("/"):
            path = f"{job_dir}/{path}"
        if path.endswith("/") or self.transport.is_dir(path):
            path = f"{path.rstrip('/')}/{default}"
        return path

    def cleanup(self, handle: JobHandle) -> None:
        """An env file a job never read (a refused submission) must not stay behind."""
        self.transport.run(["rm", "-f", "--", f"{handle.job_dir}/job.env"])

    def _checked(self, argv: list[str]) -> CommandResult:
        """A Grid Engine command (counted); its own words when it fails."""
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if not result.ok:
            raise _error(result, argv)
        return result

    # --- follow -----------------------------------------------------------------------------

    def _queue(self, *extra: str) -> list[QueuedJob]:
        """One `qstat -xml`: the user's jobs (qstat's default), or what `extra` asks."""
        return parse_qstat(self._checked(["qstat", "-xml", *extra]).stdout)

    def _accounting(self, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """`qacct -j` for each job, in one round trip; jobs without a record are left out."""
        script = ("command -v qacct >/dev/null || exit 127; "
                  f'for id; do qacct -j "$id" 2>/dev/null; echo {_RECORD_END}; done')
        argv = ["sh", "-c", script, "sh", *job_ids]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if not result.ok:
            raise _error(result, ["qacct", "-j", *job_ids])
        found: dict[str, dict[str, str]] = {}
        for job_id, text in zip(job_ids, result.stdout.split(f"{_RECORD_END}\n"), strict=False):
            record = parse_qacct(text)
            if record is not None:
                found[job_id] = record
        return found

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        listed = {job.job_id: job for job in self._queue()}
        for job_id in job_ids:
            if job_id in listed and "d" in listed[job_id].state:
                self._cancelled.add(job_id)  # a qdel from anywhere: accounting will not say so
        waiting = [j for j in job_ids if j in listed and not set(listed[j].state) & set("rtsST")]
        order = [job.job_id for job in self._queue("-u", "*", "-s", "p")] if waiting else []
        gone = [job_id for job_id in job_ids if job_id not in listed]
        records = self._accounting(gone) if gone else {}
        result = {}
        now = time.monotonic()
        for job_id in job_ids:
            if job_id in listed:
                position = order.index(job_id) + 1 if job_id in order else None
                result[job_id] = status_from_queue(listed[job_id], position)
                if result[job_id].state is JobState.RUNNING:
                    self._started.add(job_id)
            elif job_id in records:
                self._missing_since.pop(job_id, None)
                result[job_id] = status_from_accounting(job_id, records[job_id],
                                                        job_id in self._cancelled)
            else:
                result[job_id] = self._without_record(job_id, now)
        return result

    def _without_record(self, job_id: str, now: float) -> JobStatus:
        """Left qstat, no accounting record (yet): deleted before it ran (a job that never
        started gets none), or accounting not flushed yet. After `accounting_wait` a job never
        seen running was deleted while pending; one seen running is lost."""
        if job_id in self._cancelled:
            return JobStatus(job_id, JobState.CANCELLED, "deleted", reason="deleted before it ran")
        since = self._missing_since.setdefault(job_id, now)
        if now - since < self.accounting_wait:
            return JobStatus(job_id, JobState.RUNNING, "left qstat", payload_ended=True,
                             reason="left the queue; waiting for its accounting record")
        if job_id not in self._started:
            return JobStatus(job_id, JobState.CANCELLED, "deleted",
                             reason="left the queue before it ran, with no accounting record")
        return JobStatus(job_id, JobState.UNKNOWN, "unknown",
                         reason=f"not in qstat and no qacct record after {self.accounting_wait:.0f}s")

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        self._cancelled.update(job_ids)
        argv = ["qdel", *job_ids]
        self.scheduler_calls += 1
        result = self.transport.run(argv)
        if result.ok:
            return
        text = result.stderr + result.stdout
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and all("does not exist" in line or "has deleted" in line
                         or "registered the job" in line for line in lines):
            return  # already gone: not an error
        raise _error(result, argv)

    def find(self, request: JobRequest) -> JobHandle | None:
        """The job named with this request's tag: in qstat, else (only if a script was ever
        written for it, so a fresh pod costs no accounting scan) its newest qacct record."""
        mine = [job for job in self._queue() if job.name == request.tag]
        if mine:
            job_id = max(mine, key=lambda job: int(job.job_id)).job_id
        elif self.transport.exists(request.paths.script):
            record = self._accounting([request.tag]).get(request.tag)
            if record is None or not (record.get("jobnumber") or "").isdigit():
                return None
            job_id = record["jobnumber"]
        else:
            return None
        if request.spec.script is None:
            return JobHandle.rendered(job_id, request.job_dir)
        return self._located(job_id, request)


__all__ = ["SgeBackend", "parse_qacct", "parse_qstat"]
