"""A whole pod's connector: one per original container, each following its own part of the
pod's one HPC job (`hpc.offload/container: "*"`, docs/whole-pods.md).

The leader (the first init container, else the first app container: the kubelet starts it
first, and app containers only after every init container ended) copies the pod's file
volumes to the HPC side and submits the job. The others never submit: they find the job by
its tag (the pod UID), waiting while the leader has not submitted yet, and follow their own
part's output and exit marker. Each exits with its own container's code, so the pod ends as
Kubernetes would end it. Any of them receiving SIGTERM or SIGINT while the job runs cancels
the job (a deleted pod cancels its job); a native sidecar's connector, which the kubelet stops
once the app containers ended, first gives the job a moment to stop the sidecar itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from connector import outcome as outcomes
from connector.backends.base import Capability, FileStore, JobRequest, JobState, JobStatus
from connector.errors import BackendError, ConnectorError, ProfileError, SpecError
from connector.lifecycle import Connector, _completed, job_environment
from connector.pod_render import job_env_name
from connector.pod_volumes import upload_volumes
from connector.spec import VOLUMES_DIR
from connector.state import JobRecord

log = logging.getLogger("hpc-connector")

LEADER_FAILED = "leader-failed.json"  # in the pod's shared state directory
FIND_EVERY = 2.0  # seconds between looks for the job while the leader has not submitted it
FOLLOWER_GRACE = 60.0  # beyond the leader's own submit_timeout
SIGNAL_WAIT = 8.0  # a part killed by a signal: how long the job's end may take to say why
SIDECAR_WAIT = 20.0  # a stopped sidecar's connector: how long the job may take to stop it


class LeaderFailed(ConnectorError):
    """The leader container could not submit the pod's job: every follower ends with its code."""

    reason = "LeaderFailed"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PartConnector(Connector):
    """Drives one part of a whole pod's HPC job; `run()` returns that container's exit code."""

    def __init__(self, *args: Any, part: str, leader: bool, shared_dir: str | None = None,
                 volumes_dir: str = VOLUMES_DIR, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part = self.spec.part(part)
        self.leader = leader
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.volumes_dir = volumes_dir
        self._signalled_at: float | None = None
        self._part_code: int | None = None
        self._job_over = False  # the job itself ended (not only this part)

    # --- submit (leader) or find (the others) -----------------------------------------------

    def _run(self) -> outcomes.Outcome:
        try:
            if Capability.PARTS not in self.backend.capabilities:
                raise SpecError(f"backend {self.backend.type_name} cannot run a whole pod "
                                "(hpc.offload/container \"*\"); use slurm-ssh, slurm-local, sge-ssh or sge-local")
            if self.leader != (self.part.name == self.spec.leader):
                raise SpecError(f"--leader: the leader of this pod is container {self.spec.leader!r}, "
                                f"not {self.part.name!r}")
            if self.leader and any(volume.kind == "files" for volume in self.spec.volumes):
                self._files()  # before anything is submitted: can the volumes be copied?
            return super()._run()
        except ConnectorError as exc:
            if self.leader and self.record is None:
                self._tell_followers(exc)
            raise

    def _files(self) -> FileStore:
        try:
            return self.backend.files()
        except BackendError:
            raise ProfileError(
                f"this pod's ConfigMap/Secret/downwardAPI/projected volumes are copied to the HPC "
                f"side over the direct path, which backend {self.backend.type_name} (or a profile "
                "with relay: required) does not offer; use relay: preferred or a backend with "
                "file access") from None

    def _request(self, run: int = 0) -> JobRequest:
        env = self._pod_environment() if self.leader else {}
        return JobRequest(self.spec, self._job_dir(run), env, run, part=self.part.name)

    def _pod_environment(self) -> dict[str, str]:
        """Every container's variables (the leader's container holds them all, each under its
        part's prefix), as the job carries them: HPCO_P<i>_<NAME>."""
        env: dict[str, str] = {}
        for index, part in enumerate(self.spec.parts):
            own = job_environment(self.spec.part_spec(part.name), self.environ)
            env.update({job_env_name(index, name): value for name, value in own.items()})
        return env

    def _attach_or_submit(self) -> JobRecord | None:
        saved = self.state.load()
        if saved is not None:
            log.info("reattaching to HPC job %s, container %s (state file)", saved.job_id, self.part.name)
            return saved
        request = self._request()
        if not self.leader:
            return self._await_job(request)
        if self.spec.pod.uid:
            found = self.backend.find(request)
            if found is not None:
                handle = self._handle(found, request)
                log.info("reattaching to HPC job %s (found by its tag %s)", handle.job_id, request.tag)
                record = JobRecord.of(handle, self.backend.type_name)
                self.state.save(record)
                return record
        if self.signum is not None:
            return None
        return self._submit(request)

    def _submit(self, request: JobRequest) -> JobRecord:
        if any(volume.kind == "files" for volume in self.spec.volumes):
            upload_volumes(self._files(), self.spec, request.paths, self.volumes_dir)
        return super()._submit(request)

    def _await_job(self, request: JobRequest) -> JobRecord | None:
        """A follower: the job the leader submitted, found by its tag once it is there."""
        patience = self.timing.submit_timeout + FOLLOWER_GRACE
        deadline = time.monotonic() + patience
        said = False
        while self.signum is None:
            failed = self._leader_failure()
            if failed is not None:
                raise failed
            found = self._safe(lambda: self.backend.find(request))
            if found is not None:
                handle = self._handle(found, request)
                log.info("following HPC job %s (submitted by container %s): container %s's part",
                         handle.job_id, self.spec.leader, self.part.name)
                record = JobRecord.of(handle, self.backend.type_name)
                self.state.save(record)
                return record
            if time.monotonic() > deadline:
                raise LeaderFailed(f"container {self.spec.leader} submitted no HPC job for this pod "
                                   f"in {patience:.0f}s", 69)
            if not said:
                log.info("waiting for container %s to submit the pod's HPC job", self.spec.leader)
                said = True
            self._sleep(FIND_EVERY)
        return None

    def _tell_followers(self, exc: ConnectorError) -> None:
        """Why nothing was submitted, for the followers waiting in the same pod."""
        if self.shared_dir is None:
            return
        note = {"exit_code": exc.exit_code, "reason": exc.reason, "message": exc.message}
        try:
            tmp = self.shared_dir / f"{LEADER_FAILED}.tmp"
            tmp.write_text(json.dumps(note))
            tmp.replace(self.shared_dir / LEADER_FAILED)
        except OSError as err:
            log.warning("cannot tell the other containers why (%s)", err.strerror)

    def _leader_failure(self) -> LeaderFailed | None:
        if self.shared_dir is None:
            return None
        try:
            note = json.loads((self.shared_dir / LEADER_FAILED).read_text())
        except (OSError, ValueError):
            return None
        code = note.get("exit_code") if isinstance(note, dict) else None
        message = str(note.get("message", "")) if isinstance(note, dict) else ""
        return LeaderFailed(f"container {self.spec.leader} could not submit the pod's HPC job: {message}",
                            code if isinstance(code, int) and 0 < code < 256 else 1)

    # --- the part's end ---------------------------------------------------------------------

    def _end(self, status: JobStatus, payload_exit: int | None) -> JobStatus | None:
        """The part ended when its exit marker says so — the job may go on (an init container,
        or one app container of several). A part killed by a signal waits a moment for the
        job's own end (a cancel, the time limit), which then says why."""
        self._job_over = status.state.ended
        if payload_exit is None:
            if not status.state.ended:
                return None
            payload_exit = self._marker()
            if payload_exit is None:
                if status.state in (JobState.COMPLETED, JobState.FAILED):
                    why = f"{status.state.value}, and container {self.part.name} left no exit status"
                    return JobStatus(status.job_id, JobState.FAILED, why, node=status.node,
                                     reason="it never ran", exit_code=status.exit_code or 1, signal=0)
                return status
        if payload_exit > 128 and not status.state.ended:
            now = time.monotonic()
            self._signalled_at = self._signalled_at or now
            if now - self._signalled_at < SIGNAL_WAIT:
                return None
        if payload_exit > 128 and status.state.ended and status.state not in (JobState.COMPLETED, JobState.FAILED):
            return status
        self._part_code = payload_exit
        return _completed(status, payload_exit)

    def _marker(self) -> int | None:
        assert self.record is not None
        handle = self.record.handle
        got = self._safe(lambda: self.backend.progress(handle, None, None, True))
        return got.exit_status if got is not None else None

    def _finish(self, status: JobStatus) -> outcomes.Outcome:
        result = super()._finish(status)
        if self._job_over:
            self._remove_volumes()
        if self._part_code is not None:
            code = self._part_code
            result = replace(result, message=f"container {self.part.name} ({self.part.kind}) exited "
                                             f"{code} in HPC job {status.job_id}")
        return result

    def _cancel(self) -> outcomes.Outcome:
        """A sidecar is stopped by the kubelet once the app containers ended, and by the job
        at the same moment: its own end is waited for first; anything else cancels the job."""
        if self.part.kind == "sidecar" and self.record is not None:
            deadline = time.monotonic() + SIDECAR_WAIT
            while time.monotonic() < deadline:
                code = self._marker()
                if code is not None:
                    self._part_code = code
                    return self._finish(_completed(JobStatus(self.record.job_id, JobState.RUNNING), code))
                time.sleep(self.timing.fast)
        result = super()._cancel()
        self._remove_volumes()
        return result

    def _remove_volumes(self) -> None:
        """The job removes its volumes when it ends; a job killed outright (Grid Engine's qdel
        sends SIGKILL) cannot, so whoever sees it end removes them too."""
        if self.record is None or not any(volume.kind == "files" for volume in self.spec.volumes):
            return
        with contextlib.suppress(ConnectorError):  # no file access (the relay): the job's own cleanup
            self.backend.files().remove(self.record.handle.job_dir + "/volumes")
