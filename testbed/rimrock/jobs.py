"""One user's jobs: submit, update, abort, delete, with Rimrock's rules (its `UserJobs`).

- submit: the script is submitted in `working_directory` (else the host's root path, here
  the user's home); the job is saved as QUEUED. A timeout → 408 "Unable to submit new job
  because of timeout"; a failing script → 500 "Submission of new job failed" with the
  script's exit code and output.
- update (every GET): for each host the user ever used, one status query for the jobs that
  still need it; then each listed job takes the queried status, and a job the query did not
  report becomes FINISHED. FINISHED and ABORTED never change again; ERROR is not final, so a
  failed job reads ERROR while SLURM still lists it, then FINISHED. When a job is FINISHED
  or ABORTED and has no history yet, the history (nodes, cores, times) is filled in.
- abort: unless FINISHED, the job is cancelled on the host; then it is ABORTED (even a
  FINISHED one). delete: the same cancel, then the record is gone.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from . import hpc
from .store import TERMINAL, Job, Store

log = logging.getLogger("rimrock")


class RunError(RuntimeError):
    """Rimrock's RunException: HTTP 408 if the time limit cut the command, else 500."""

    def __init__(self, message: str | None, result: hpc.RunResult | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = 0
        self.output: str | None = None
        self.error: str | None = None
        self.timed_out = False
        if result is not None:
            self.exit_code = result.exit_code or -1  # Rimrock never reports 0 for a failure
            self.output, self.error = result.output.strip(), result.error
            self.timed_out = result.timed_out


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job with {job_id} id does not exist")


@dataclass
class Site:
    """Where a user's files live on the testbed's host (Rimrock's PathHelper)."""

    root_path: str = "/home/{login}/"

    def root(self, login: str) -> str:
        return self.root_path.format(login=login)


def _checked(result: hpc.RunResult) -> hpc.RunResult:
    if result.timed_out:
        raise RunError("Unable to submit new job because of timeout", result)
    if result.exit_code != 0:
        raise RunError("Submission of new job failed", result)  # also for stop: as Rimrock
    return result


class UserJobs:
    def __init__(self, store: Store, gateway: hpc.Gateway, site: Site, login: str) -> None:
        self.store, self.gateway, self.site, self.login = store, gateway, site, login

    def submit(self, host: str, working_directory: str | None, script: str, tag: str | None) -> Job:
        self.gateway.check_host(host)
        directory = working_directory if working_directory is not None else self.site.root(self.login)
        if not directory.endswith("/"):
            directory += "/"
        name = f"script-{uuid.uuid4()}.sh"
        with self.gateway.session(host, self.login) as sess:
            result = _checked(hpc.start(sess, directory, script, name))
        try:
            report = json.loads(result.output)
        except ValueError as exc:
            raise RunError(f"cannot read the start script's answer: {exc}") from None
        if report.get("result") != "OK":
            raise RunError(report.get("error_message"), result)
        job = self.store.save(Job(None, report["job_id"], "QUEUED", report["standard_output"],
                                  report["standard_error"], self.login, host, tag))
        log.info("job %s of %s submitted (tag %s)", job.job_id, self.login, tag)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.store.by_job_id_and_user(job_id, self.login)

    def update(self, hosts: list[str] | None = None, tag: str | None = None,
               only: list[str] | None = None) -> list[Job]:
        hosts = self.store.hosts(self.login) if hosts is None else hosts
        if not hosts:
            return []
        statuses: dict[str, str] = {}
        history: dict[str, dict[str, str]] = {}
        for host in hosts:
            ids = self.store.polled_ids(self.login, host)
            if only is not None:
                ids = [i for i in ids if i in only]
            if not ids:
                continue
            with self.gateway.session(host, self.login) as sess:
                run, result = hpc.status(sess, self.login, ids)
            if run.timed_out or run.exit_code != 0:
                raise RunError(run.error or ("Timeout occurred" if run.timed_out else None))
            for key, value in result.statuses.items():
                statuses.setdefault(key, value)
            for key, item in result.history.items():
                history.setdefault(key, item)
        jobs = self.store.on_hosts(self.login, hosts, tag)
        if only is not None:
            jobs = [j for j in jobs if j.job_id in only]
        for job in jobs:
            self._apply(job, statuses.get(job.job_id, "FINISHED"), history.get(job.job_id))
        return jobs

    def _apply(self, job: Job, status: str, history: dict[str, str] | None) -> None:
        if job.status != status:
            if job.status in TERMINAL:
                log.debug("job %s: terminal state %s kept (the query said %r)", job.job_id,
                            job.status, status)
            else:
                log.info("job %s: %s -> %s", job.job_id, job.status, status)
                job.status = status
                self.store.save(job)
        if job.status in TERMINAL and job.cores is None and history is not None:
            for key, value in history.items():
                setattr(job, key, value)
            self.store.save(job)

    def _cancel(self, job_id: str) -> Job:
        job = self.store.by_job_id(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.status != "FINISHED":
            with self.gateway.session(job.host, self.login) as sess:
                _checked(hpc.stop(sess, job_id))
            log.info("job %s: cancelled on %s", job_id, job.host)
        return job

    def abort(self, job_id: str) -> None:
        job = self._cancel(job_id)
        job.status = "ABORTED"
        self.store.save(job)
        log.info("job %s: aborted", job_id)

    def delete(self, job_id: str) -> None:
        job = self._cancel(job_id)
        self.store.delete(job)
        log.info("job %s: deleted", job_id)
