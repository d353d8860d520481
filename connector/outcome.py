"""How an HPC job's end becomes the container's exit code and termination message.

A Job's `podFailurePolicy` can match these codes, so each end state that is not the
command's own exit has a fixed, documented code (docs/exit-codes.md):

| end                                   | exit code |
|---------------------------------------|-----------|
| COMPLETED / FAILED with exit N        | N         |
| killed by signal N                    | 128 + N   |
| OUT_OF_MEMORY                         | 137 (as Kubernetes' OOMKilled) |
| TIMEOUT                               | 201       |
| CANCELLED outside the pod             | 202       |
| NODE_FAIL                             | 203       |
| PREEMPTED                             | 204       |
| BOOT_FAIL                             | 205       |
| DEADLINE                              | 206       |
| job vanished from the scheduler       | 207       |
| pod stopped (SIGINT / SIGTERM): job cancelled | 130 / 143 |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from connector.backends.base import JobState, JobStatus

TAIL_CHARS = 1500  # of the job's stderr in the termination message
STATE_CODES = {
    JobState.OUT_OF_MEMORY: 137,
    JobState.TIMEOUT: 201,
    JobState.CANCELLED: 202,
    JobState.NODE_FAIL: 203,
    JobState.PREEMPTED: 204,
    JobState.BOOT_FAIL: 205,
    JobState.DEADLINE: 206,
    JobState.UNKNOWN: 207,
}
STATE_REASONS = {
    JobState.OUT_OF_MEMORY: "HPCOutOfMemory",
    JobState.TIMEOUT: "HPCTimeLimit",
    JobState.CANCELLED: "HPCCancelled",
    JobState.NODE_FAIL: "HPCNodeFail",
    JobState.PREEMPTED: "HPCPreempted",
    JobState.BOOT_FAIL: "HPCBootFail",
    JobState.DEADLINE: "HPCDeadline",
    JobState.UNKNOWN: "HPCJobLost",
}


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    reason: str
    message: str
    job_id: str | None = None
    state: str | None = None
    stderr_tail: str = ""  # the job's last stderr lines: why it failed, where users look

    def termination_message(self) -> str:
        """JSON for the pod's termination message (Kubernetes keeps up to 4 KiB: the message
        and the stderr tail are cut so the whole stays well inside)."""
        data = {
            "jobId": self.job_id,
            "state": self.state,
            "exitCode": self.exit_code,
            "reason": self.reason,
            "message": self.message[:1000],
        }
        if self.stderr_tail:
            data["stderrTail"] = self.stderr_tail[-TAIL_CHARS:]
        return json.dumps(data, sort_keys=True)

    def write(self, path: str | None) -> None:
        if not path:
            return
        try:
            with open(path, "w") as handle:
                handle.write(self.termination_message())
        except OSError:
            pass  # outside a pod /dev/termination-log may not exist; the log has it all


def outcome_of(status: JobStatus) -> Outcome:
    """The container's exit for a job that ended on its own."""
    state = status.state
    where = f"HPC job {status.job_id} ended {status.raw_state or state.value}"
    if state in (JobState.COMPLETED, JobState.FAILED):
        code, signal = status.exit_code or 0, status.signal or 0
        if signal:
            return Outcome(128 + signal, "HPCSignal", f"{where}: killed by signal {signal}",
                           status.job_id, state.value)
        if state is JobState.FAILED and code == 0:
            return Outcome(1, "HPCFailed", f"{where} ({status.reason or 'no reason given'})",
                           status.job_id, state.value)
        reason = "Completed" if code == 0 else "HPCExitCode"
        return Outcome(code, reason, f"{where} with exit code {code}", status.job_id, state.value)
    detail = f" ({status.reason})" if status.reason and status.reason != "None" else ""
    return Outcome(STATE_CODES.get(state, 207), STATE_REASONS.get(state, "HPCJobLost"),
                   f"{where}{detail}", status.job_id, state.value)


def interrupted(signum: int, job_id: str | None, cancelled: bool) -> Outcome:
    name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
    what = f"HPC job {job_id} cancelled" if cancelled and job_id else "no HPC job was running"
    return Outcome(128 + signum, "PodStopped", f"{name} received: {what}", job_id, "CANCELLED")


def exit_code_for(outcome: Outcome) -> int:
    """Exit statuses are one byte; keep what we report and what the kernel sees equal."""
    return outcome.exit_code & 0xFF if outcome.exit_code >= 0 else 1


def termination_path(default: str = "/dev/termination-log") -> str:
    return os.environ.get("HPC_OFFLOAD_TERMINATION_LOG", default)
