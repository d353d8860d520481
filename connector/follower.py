"""The hand-over to the lean follower (`follower/`, the `hpc-offload-follow` program).

In relay mode, once its job is pending or running, the connector replaces itself (exec) with a
small Go program that only follows the job through the relay: one long poll at a time, the new
output to the pod log (offsets saved first), the pending/running lines and records, the
readiness port. A Python process that speaks TLS costs at least 13 MiB RSS before it does
anything; the follower about 8, with no SSH client and no interpreter (docs/relay.md).

Whatever needs the connector's judgement comes back to it by exec, with the reason in the
environment: the job's end or end marker (the outcome, the termination message), a fault on
the HPC side or an unexpected answer (backoff, the direct path of `relay: preferred`), a
rotated profile (a new session). A signal is the follower's own: it sends the cancel at once,
waits for the relay to see the job cancelled, prints its last output and writes the pod's end
as the connector would (a hundred pods deleted together start no interpreter); any other turn
(the job ended on its own meanwhile, no answer) goes back to the connector. It reattaches
from its state file, as after a container restart, so nothing is submitted twice and no line
is printed twice.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.backends.base import JobState, JobStatus
from connector.state import JobRecord

log = logging.getLogger("hpc-connector")

PROGRAM = "hpc-offload-follow"  # installed beside the connector's python (the image's venv)
RETURN_ENV = "HPC_OFFLOAD_FOLLOWER_RETURN"  # why the follower handed the job back
CANCEL_ENV = "HPC_OFFLOAD_FOLLOWER_CANCEL"  # the signal it got (it sent the cancel already)
LAST_ENV = "HPC_OFFLOAD_FOLLOWER_LAST"  # STATE|POSITION|REASON it reported last
SESSION_ENV = "HPC_OFFLOAD_FOLLOWER_SESSION"  # the relay session it followed the job in
COUNT_ENV = "HPC_OFFLOAD_FOLLOWER_HANDOFFS"
TAIL_FILE = "stderr-tail"  # the job's stderr lines it printed (for the termination message)
MAX_HANDOFFS = 50  # then the connector follows the job itself to its end
# After a hand-back for these reasons the connector follows the job itself this long first.
STAY = {"fault": 30.0, "relay": 30.0, "profile": 15.0, "error": math.inf}
OFF = ("false", "off", "no", "0")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # blocked across the exec


@dataclass
class Handoff:
    program: Path
    state_dir: str
    ready_port: int | None
    records: bool
    quiet: bool
    termination_log: str | None = None  # the follower ends a cancelled job's pod itself
    returned: str | None = None  # why the follower handed the job back to this process
    session: str = ""  # the relay session the follower used
    cancel: int | None = None  # the signal the follower got
    count: int = 0
    not_before: float = 0.0

    @classmethod
    def configure(cls, setting: Any, state_dir: str | None, ready_port: int | None,
                  logs: str, termination_log: str | None = None) -> Handoff | None:
        """None when the profile says `lean_follower: false`, no follower is installed, or
        there is no state directory to reattach from."""
        if str(setting).strip().lower() in OFF or not state_dir:
            return None
        program = Path(sys.executable).parent / PROGRAM
        if not os.access(program, os.X_OK):
            return None
        returned = os.environ.pop(RETURN_ENV, None)
        cancel = os.environ.pop(CANCEL_ENV, None)
        handoff = cls(program, state_dir, ready_port, records=logs != "job-only", quiet=logs == "job-only",
                      termination_log=termination_log,
                      returned=returned, session=os.environ.pop(SESSION_ENV, ""),
                      cancel=int(cancel) if cancel and cancel.isdigit() else None,
                      count=_int(os.environ.get(COUNT_ENV)))
        if returned is not None:
            handoff.not_before = time.monotonic() + STAY.get(returned, 0.0)
            log.debug("the lean follower handed the job back (%s)", returned)
        return handoff

    def resume(self, backend: object) -> None:
        """Back from the follower (for whatever reason): if the profile rotated meanwhile, the
        job moves from the follower's session to one opened with the new profile."""
        move = getattr(backend, "move_from_session", None)
        if self.returned is not None and self.session and move is not None:
            move(self.session)  # any reason: the profile may have changed while it followed

    def last_status(self, job_id: str) -> JobStatus | None:
        """What the follower reported last, so the connector does not say it again."""
        text = os.environ.pop(LAST_ENV, "")
        state, _, rest = text.partition("|")
        position, _, reason = rest.partition("|")
        if state not in ("PENDING", "RUNNING"):
            return None
        return JobStatus(job_id=job_id, state=JobState(state), reason=reason,
                         queue_position=_int(position) or None)

    def take_tail(self) -> list[bytes]:
        path = Path(self.state_dir) / TAIL_FILE
        try:
            lines = path.read_bytes().splitlines(keepends=True)
            path.unlink()
        except OSError:
            return []
        return lines

    def offer(self, backend: object, record: JobRecord, status: JobStatus) -> None:
        """Become the follower when the backend can hand the job over; returns when not."""
        if time.monotonic() < self.not_before or self.count >= MAX_HANDOFFS:
            return
        planner = getattr(backend, "lean_plan", None)
        plan = planner(record.handle) if planner is not None else None
        if plan is None:
            return
        args = [str(self.program), "--relay", plan["url"], "--session", plan["session"], "--job", plan["key"],
                "--job-id", record.job_id, "--state-dir", self.state_dir, "--version", str(plan["version"]),
                "--last-state", status.state.value, "--last-reason", status.reason or "",
                "--last-position", str(status.queue_position or 0)]
        if plan.get("profile"):
            args += ["--profile", plan["profile"], "--fingerprint", plan["fingerprint"]]
        if self.ready_port:
            args += ["--ready-port", str(self.ready_port)]
        if self.termination_log:
            args += ["--termination-log", self.termination_log]
        if self.records:
            args.append("--records")
        if self.quiet:
            args.append("--quiet")
        if record.handle.stderr is not None:
            args.append("--stderr")
        args += ["--", sys.executable, *sys.orig_argv[1:]]
        env = {**os.environ, COUNT_ENV: str(self.count + 1)}
        sys.stdout.flush()
        sys.stderr.flush()
        log.debug("handing HPC job %s to the lean follower", record.job_id)
        # Blocked across the exec (the mask survives it); the Go runtime unblocks them as it
        # starts, so a signal in its first milliseconds still ends it (docs/relay.md, known gap).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            os.execve(self.program, args, env)  # noqa: S606 - our own program, no shell, args as a list
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            log.warning("the lean follower cannot start (%s); the connector follows the job", exc.strerror)
            self.not_before = math.inf


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0
