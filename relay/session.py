"""One site session: one real backend (one SSH connection, or one REST session) shared by every
job of one (namespace, profile, credential), driven by one worker thread.

The thread does what the connectors would each have done, once for all of them:
- per monitoring period ONE `statuses(all job ids)`; jobs whose end is near (end marker seen,
  cancel sent, just registered) are asked again sooner, together, at most every `quick` s, for
  `quick_for` s (as a direct connector does after the marker): a job that stays near its end
  (a requeued job's marker from its first run) must not cost a request a second for good;
- per tick ONE command on the login node reading every waiting job's new output and end
  marker (`relay.reader`), with every heartbeat file refreshed in it once per period;
- the cancels of a tick gathered into ONE `cancel_many`;
- submissions, finds and workdir lookups as they come, one at a time.
Connectors long-poll (`Waiter`); a waiter is answered at the end of the tick that has news
for it (new output, the marker, a changed status) or by the server after `WAIT_SECONDS`.
A job whose connector stopped asking for `orphan_timeout` is cancelled: no orphan burns an
allocation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connector.backends.base import Backend, Capability, JobHandle, JobRequest, JobStatus, Progress
from connector.backends.shell import ShellBackend
from connector.errors import ConnectorError, InternalError, TransientError
from connector.render import JobPaths
from relay import reader
from relay.auth import Identity
from relay.batching import find_many

log = logging.getLogger("hpc-offload.relay")
T = TypeVar("T")
SLOW_TICK = 3.0  # seconds: a tick this long is logged with where its time went

@dataclass(frozen=True)
class Settings:
    tick: float = 1.0  # seconds between reads of the jobs' output
    quick: float = 1.0  # the soonest a near-ended job is asked again
    quick_for: float = 10.0  # how long a job stays near its end (then: the period)
    period: float = 30.0  # monitoring period when neither the profile nor a job names one
    min_period: float = 2.0
    orphan_timeout: float = 600.0  # no connector asked for a job this long: cancel it
    read_chunk: int = 256 * 1024  # bytes per stream per job per tick
    tick_budget: int = 16 * 1024 * 1024  # bytes read per tick over all jobs
    forget_after: float = 600.0  # an ended job nobody asks about is dropped
    op_slice: float = 1.0  # ops run at most this long before a due tick goes first
    storm_quiet: float = 1.0  # a cancel asked this recently: pods are being deleted, status waits
    storm_hold_max: float = 5.0  # ... this long at most


class Future:
    """An asyncio future of the server's loop, resolved from the session thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def set(self, value: Any) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, value, None)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, None, exc)


def _resolve(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


@dataclass
class Waiter:
    stdout_offset: int | None
    stderr_offset: int | None
    marker: bool
    version: int
    future: Future
    got: Progress = field(default_factory=Progress)


@dataclass
class Read:
    """An explicit `read_output` (the final pump at a job's end): done in the next tick."""

    path: str
    offset: int
    limit: int
    future: Future


@dataclass
class RelayJob:
    handle: JobHandle
    owner: Identity
    period: float
    last_seen: float
    tag: str = ""
    status: JobStatus | None = None
    version: int = 0  # one more at each news: a new status, the end marker
    marker: int | None = None
    cancel_requested: bool = False
    cancel_asked: float = 0.0  # when the connector (or the orphan check) asked for the cancel
    cancel_sent: float | None = None
    quick_until: float = 0.0  # asked at the quick pace until then (just registered, marker, cancel)
    released: bool = False
    ended_at: float | None = None
    waiter: Waiter | None = None
    reads: list[Read] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status is not None and self.status.state.ended


class Session:
    """The jobs of one (namespace, profile, credential) and the one backend that follows them."""

    def __init__(self, key: str, namespace: str, backend: Backend, settings: Settings,
                 profile_period: float | None, orphan_timeout: float | None, cleanup: Callable[[], None]) -> None:
        self.key = key
        self.namespace = namespace
        self.backend = backend
        self.settings = settings
        self.profile_period = profile_period
        self.orphan_timeout = orphan_timeout if orphan_timeout is not None else settings.orphan_timeout
        self._cleanup = cleanup
        self.jobs: dict[str, RelayJob] = {}
        self.submitted: dict[str, JobHandle] = {}  # tag -> handle: a repeated submit is the same job
        self.lock = threading.Lock()
        self._ops: deque[tuple[Callable[[], Any], Future]] = deque()
        self._finds: list[tuple[JobRequest, Future]] = []  # answered together (relay.batching)
        self._wake = threading.Event()
        self._cancels_waiting = False  # a cancel asked since the last cancel call
        self._closing = False
        self.last_used = time.monotonic()
        self.fault: str | None = None  # the last tick's failure, told to connectors
        self._next_status = 0.0
        self._next_quick = 0.0
        self._status_held_since: float | None = None  # a delete storm holds the status listing
        self._next_heartbeat = 0.0
        self._read_first: str | None = None  # the job the last tick's read budget stopped at
        self._batch_reader = isinstance(backend, ShellBackend)
        self.counters = {"ticks": 0, "status_requests": 0, "cancel_requests": 0, "read_commands": 0,
                         "orphans_cancelled": 0, "submits": 0}
        self.thread = threading.Thread(target=self._loop, name=f"session-{key[:8]}", daemon=True)
        self.thread.start()

    # --- called from the server's loop ------------------------------------------------------

    def call(self, loop: asyncio.AbstractEventLoop, action: Callable[[], T]) -> asyncio.Future[T]:
        """Run `action` on the session thread (it owns the backend); await the result."""
        future = Future(loop)
        with self.lock:
            self._ops.append((action, future))
            self.last_used = time.monotonic()
        self._wake.set()
        return future.future

    def find(self, loop: asyncio.AbstractEventLoop, request: JobRequest) -> asyncio.Future[JobHandle | None]:
        """`backend.find`, gathered with the other finds waiting: one listing for a burst."""
        future = Future(loop)
        with self.lock:
            self._finds.append((request, future))
            self.last_used = time.monotonic()
        self._wake.set()
        return future.future

    def register(self, handle: JobHandle, owner: Identity, period: float | None, tag: str = "") -> RelayJob:
        """Followed by its key: the job, or one part of a whole pod's job (each container of
        the pod follows its own part's output and end marker)."""
        with self.lock:
            job = self.jobs.get(handle.key)
            now = time.monotonic()
            if job is None:
                job = self.jobs[handle.key] = RelayJob(handle, owner, self._period(period), now, tag)
                self._near_end(job, now)  # its first status soon
            job.last_seen = now
            self.last_used = now
            return job

    def job(self, key: str) -> RelayJob | None:
        with self.lock:
            job = self.jobs.get(key)
            if job is not None:
                job.last_seen = self.last_used = time.monotonic()
            return job

    def wait(self, job: RelayJob, loop: asyncio.AbstractEventLoop, stdout_offset: int | None,
             stderr_offset: int | None, marker: bool, version: int) -> asyncio.Future[Any]:
        """A long poll: answered at the end of the tick that has news for this job."""
        waiter = Waiter(stdout_offset, stderr_offset, marker, version, Future(loop))
        with self.lock:
            if job.waiter is not None:  # the connector gave up on the previous one
                job.waiter.future.set(None)
            job.waiter = waiter
            job.last_seen = time.monotonic()
        return waiter.future.future

    def read(self, job: RelayJob, loop: asyncio.AbstractEventLoop, path: str, offset: int,
             limit: int) -> asyncio.Future[Any]:
        request = Read(path, offset, limit, Future(loop))
        with self.lock:
            job.reads.append(request)
        self._wake.set()
        return request.future.future

    def drop_waiter(self, job: RelayJob, future: asyncio.Future[Any]) -> None:
        with self.lock:
            if job.waiter is not None and job.waiter.future.future is future:
                job.waiter = None

    def cancel(self, job: RelayJob) -> None:
        with self.lock:
            if not job.cancel_requested:
                job.cancel_asked = time.monotonic()
                self._cancels_waiting = True
            job.cancel_requested = True
        self._wake.set()

    def release(self, job: RelayJob) -> None:
        """The connector is done with the job (it ended, or it moved to another session)."""
        with self.lock:
            job.released = True
            if job.waiter is not None:
                job.waiter.future.set(None)
                job.waiter = None
            self.jobs.pop(job.handle.key, None)
            for tag in [tag for tag, handle in self.submitted.items() if handle.key == job.handle.key]:
                del self.submitted[tag]

    def snapshot(self, job: RelayJob) -> dict[str, Any]:
        with self.lock:
            return {"status": job.status, "version": job.version, "marker": job.marker, "fault": self.fault}

    def idle_for(self, now: float) -> float:
        with self.lock:
            return 0.0 if self.jobs or self._ops or self._finds else now - self.last_used

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    # --- the session thread -----------------------------------------------------------------

    def _period(self, asked: float | None) -> float:
        period = asked or self.profile_period or self.settings.period
        return max(period, self.settings.min_period)

    def _near_end(self, job: RelayJob, now: float) -> None:
        """Ask the job's status at the quick pace for `quick_for` s, the first time soon."""
        job.quick_until = now + self.settings.quick_for
        self._next_quick = 0.0

    def _loop(self) -> None:
        next_tick = 0.0
        while not self._closing:
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            self._run_ops(next_tick)
            if self._cancels_waiting:  # a cancel frees an allocation: it does not wait for the tick
                with self.lock:
                    jobs = list(self.jobs.values())
                self._send_cancels(jobs, time.monotonic())
            now = time.monotonic()
            if now >= next_tick or self._reads_waiting():
                try:
                    self._tick(now)
                except Exception:  # a bug must not end the session's thread
                    log.exception("session %s: tick failed", self.key[:8])
                next_tick = now + self.settings.tick
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("session %s: close failed", self.key[:8], exc_info=True)
        self._cleanup()

    def _reads_waiting(self) -> bool:
        with self.lock:
            return any(job.reads for job in self.jobs.values())

    def _run_finds(self) -> None:
        with self.lock:
            finds, self._finds = self._finds, []
        if not finds:
            return
        try:
            found = find_many(self.backend, [request for request, _ in finds])
        except ConnectorError as exc:
            for _, future in finds:
                future.fail(exc)
            return
        except Exception as exc:  # a bug: a clear error for the connectors, the trace here
            log.exception("session %s: find failed", self.key[:8])
            for _, future in finds:
                future.fail(InternalError(f"relay: unexpected {type(exc).__name__}"))
            return
        for (_, future), handle in zip(finds, found, strict=True):
            future.set(handle)

    def _run_ops(self, next_tick: float) -> None:
        started = time.monotonic()
        self._run_finds()
        while True:
            with self.lock:
                if not self._ops:
                    return
                action, future = self._ops.popleft()
            try:
                future.set(action())
            except ConnectorError as exc:
                future.fail(exc)
            except Exception as exc:  # a bug: a clear error for the connector, the trace here
                log.exception("session %s: operation failed", self.key[:8])
                future.fail(InternalError(f"relay: unexpected {type(exc).__name__}"))
            now = time.monotonic()
            if now >= next_tick and now - started > self.settings.op_slice:
                return  # the tick goes first; the rest after it

    def _tick(self, now: float) -> None:
        self.counters["ticks"] += 1
        with self.lock:
            jobs = list(self.jobs.values())
            for job in jobs:
                if job.waiter is not None:
                    job.last_seen = now
        phases = []
        for name, step in (("cancel", self._send_cancels), ("status", self._ask_statuses), ("read", self._read)):
            if name != "cancel" and self._cancels_waiting:  # asked during a slow phase: sent before the next
                started = time.monotonic()
                self._send_cancels(jobs, now)
                phases.append(("cancel", time.monotonic() - started))
            started = time.monotonic()
            step(jobs, now)
            phases.append((name, time.monotonic() - started))
        self._answer(jobs)
        self._orphans(jobs, now)
        if sum(t for _, t in phases) > SLOW_TICK:  # what delays every connector's news: say where
            log.info("session %s: slow tick over %d jobs: %s", self.key[:8], len(jobs),
                     ", ".join(f"{name} {t:.1f}s" for name, t in phases))

    def _fault(self, what: str, exc: ConnectorError | None) -> None:
        if exc is None:
            if self.fault is not None:
                log.info("session %s: contact with the HPC side restored", self.key[:8])
            self.fault = None
            return
        if self.fault is None:
            log.warning("session %s: %s: %s", self.key[:8], what, exc.message)
        self.fault = exc.message

    def _send_cancels(self, jobs: list[RelayJob], now: float) -> None:
        self._cancels_waiting = False
        wanted = [job for job in jobs if job.cancel_requested and job.cancel_sent is None and not job.ended]
        if not wanted:
            return
        try:
            self.counters["cancel_requests"] += 1
            self.backend.cancel_many(list(dict.fromkeys(job.handle.job_id for job in wanted)))
        except ConnectorError as exc:
            self._fault("cancel", exc)
            return
        for job in wanted:
            job.cancel_sent = now
            self._near_end(job, now)
        waited = time.monotonic() - min(job.cancel_asked or now for job in wanted)
        log.info("session %s: %d HPC job(s) cancelled in one call; the oldest asked %.1fs before", self.key[:8],
                 len(wanted), waited)

    def _ask_statuses(self, jobs: list[RelayJob], now: float) -> None:
        active = [job for job in jobs if not job.ended]
        if not active or self._storm_holds(jobs, now):
            return
        self._status_held_since = None
        if now >= self._next_status:
            asked = active
            self._next_status = now + min(job.period for job in active)
        else:
            asked = [job for job in active if now < job.quick_until and (
                job.status is None or job.marker is not None or job.cancel_sent is not None)]
            if not asked or now < self._next_quick:
                return
        self._next_quick = now + self.settings.quick
        try:
            self.counters["status_requests"] += 1
            found = self.backend.statuses(list(dict.fromkeys(job.handle.job_id for job in asked)))
        except ConnectorError as exc:
            self._fault("status", exc)
            return
        self._fault("status", None)
        with self.lock:
            for job in asked:
                status = found.get(job.handle.job_id)
                if status is not None and status != job.status:
                    job.status = status
                    job.version += 1
                    if status.state.ended and job.ended_at is None:
                        job.ended_at = now

    def _storm_holds(self, jobs: list[RelayJob], now: float) -> bool:
        """True while pods are being deleted one after another (a cancel asked within
        `storm_quiet` s): a listing now, slow under the storm, would hold the next cancel behind
        it, and the jobs being cancelled are asked right after. It waits `storm_hold_max` s at most."""
        last = max((job.cancel_asked for job in jobs if job.cancel_requested), default=None)
        if last is None or now - last >= self.settings.storm_quiet:
            return False
        if self._status_held_since is None:
            self._status_held_since = now
        return now - self._status_held_since < self.settings.storm_hold_max

    def _read(self, jobs: list[RelayJob], now: float) -> None:
        """Everything this tick reads, in one command (or one request per job where the
        backend has no batch reader)."""
        if not self.backend.capabilities & (Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT):
            return
        with self.lock:
            plan, reads = self._plan_reads(self._read_order(jobs))
            touches = self._touches(jobs, now)
        if not reads and not touches:
            return
        try:
            results = self._batch(reads, touches) if self._batch_reader else self._one_by_one(plan)
        except ConnectorError as exc:
            self._fault("reading output", exc)
            for _, what, item in plan:
                if what == "read":
                    item.future.fail(TransientError(f"relay: {exc.message}"))
            return
        with self.lock:
            self._take_reads(plan, results, now)

    def _read_order(self, jobs: list[RelayJob]) -> list[RelayJob]:
        """The jobs from the one the last tick's budget stopped at: each waits at most a few
        ticks, whatever the number of jobs."""
        first = next((n for n, job in enumerate(jobs) if job.handle.key == self._read_first), 0)
        return jobs[first:] + jobs[:first]

    def _plan_reads(self, jobs: list[RelayJob]) -> tuple[list[tuple[RelayJob, str, Any]], list[tuple[str, int, int]]]:
        """(job, what, waiter or read) and its (path, offset, limit), explicit reads first. The
        batch reader bounds the bytes it returns itself; a backend without one is asked for
        `tick_budget` bytes at most, counted as the reads' limits."""
        plan: list[tuple[RelayJob, str, Any]] = []
        for job in jobs:
            plan += [(job, "read", request) for request in job.reads]
            job.reads = []
        budget = self.settings.tick_budget - sum(item.limit for _, _, item in plan)
        self._read_first = None
        chunk = self.settings.read_chunk
        for job in jobs:
            waiter = job.waiter
            if waiter is None:
                continue
            if budget <= 0 and not self._batch_reader:
                self._read_first = self._read_first or job.handle.key
                continue
            if waiter.stdout_offset is not None:
                plan.append((job, "stdout", waiter))
                budget -= chunk
            if waiter.stderr_offset is not None and job.handle.stderr:
                plan.append((job, "stderr", waiter))
                budget -= chunk
            if waiter.marker and job.marker is None:
                plan.append((job, "marker", waiter))
        return plan, [self._read_of(job, what, item) for job, what, item in plan]

    def _read_of(self, job: RelayJob, what: str, item: Any) -> tuple[str, int, int]:
        if what == "read":
            return (item.path, item.offset, item.limit)
        if what == "stdout":
            return (job.handle.stdout, item.stdout_offset, self.settings.read_chunk)
        if what == "stderr":
            return (job.handle.stderr or "", item.stderr_offset, self.settings.read_chunk)
        return (job.handle.exit_status, 0, 64)

    def _touches(self, jobs: list[RelayJob], now: float) -> list[str]:
        """Every followed job's heartbeat file, once a period (in the batch read)."""
        if not self._batch_reader or now < self._next_heartbeat:
            return []
        # only jobs a connector still follows: a vanished pod's job is left to its switch
        # should the relay's own orphan cancel not get through
        touches = list(dict.fromkeys(JobPaths(job.handle.job_dir).heartbeat for job in jobs
                                     if not job.ended and now - job.last_seen < self.orphan_timeout))
        periods = [job.period for job in jobs] or [self.settings.period]
        self._next_heartbeat = now + min(min(periods), self.orphan_timeout / 4)
        return touches

    def _take_reads(self, plan: list[tuple[RelayJob, str, Any]], results: list[bytes | None], now: float) -> None:
        """Give each read its answer; what the budget left unread goes first next tick."""
        for (job, what, item), data in zip(plan, results, strict=False):
            if what == "read":
                item.future.set(data or b"")
            elif what == "stdout":
                item.got = Progress(data or b"", item.got.stderr, item.got.exit_status)
            elif what == "stderr":
                item.got = Progress(item.got.stdout, data or b"", item.got.exit_status)
            else:
                text = (data or b"").decode("ascii", "replace").strip()
                if text.isdigit():
                    job.marker = int(text)
                    job.version += 1
                    self._near_end(job, now)  # its end, soon
        for job, what, item in plan[len(results):]:
            if what == "read":
                job.reads.append(item)
            elif self._read_first is None:
                self._read_first = job.handle.key

    def _batch(self, reads: list[tuple[str, int, int]], touches: list[str]) -> list[bytes | None]:
        assert isinstance(self.backend, ShellBackend)
        transport = self.backend.transport
        self.counters["read_commands"] += 1
        stdin = reader.encode(reads, touches, self.settings.tick_budget)
        result = transport.run(reader.argv(), timeout=60, stdin=stdin)
        if result.returncode == reader.NO_INTERPRETER:
            log.warning("session %s: no python3 or perl on the HPC side: reading with a shell "
                        "(a few processes per file)", self.key[:8])
            self._batch_reader = False
            self._fault("reading output", None)
            return transport.read_files(reads) if reads else []
        if not result.ok:
            raise TransientError(f"reading output: {result.describe(['python3'])}")
        try:
            return reader.decode(result.stdout, len(reads))
        except ValueError as exc:
            raise TransientError(f"reading output: {exc}") from None

    def _one_by_one(self, plan: list[tuple[RelayJob, str, Any]]) -> list[bytes | None]:
        """Backends without a shell: their own `progress` per job, `read_output` per read."""
        results: list[bytes | None] = []
        done: dict[int, Progress] = {}
        for job, what, item in plan:
            if what == "read":
                stream = "stdout" if item.path == job.handle.stdout else "stderr"
                results.append(self.backend.read_output(job.handle, stream, item.offset, item.limit))
                continue
            if id(item) not in done:
                done[id(item)] = self.backend.progress(
                    job.handle, item.stdout_offset, item.stderr_offset if job.handle.stderr else None,
                    item.marker and job.marker is None)
            got = done[id(item)]
            if what == "stdout":
                results.append(got.stdout)
            elif what == "stderr":
                results.append(got.stderr)
            else:
                results.append(None if got.exit_status is None else str(got.exit_status).encode())
        return results

    def _answer(self, jobs: list[RelayJob]) -> None:
        with self.lock:
            for job in jobs:
                waiter = job.waiter
                if waiter is None:
                    continue
                news = waiter.got.stdout or waiter.got.stderr or job.version > waiter.version
                if news:
                    got = Progress(waiter.got.stdout, waiter.got.stderr, job.marker if waiter.marker else None)
                    waiter.future.set({"progress": got, "status": job.status, "version": job.version,
                                       "fault": self.fault})
                    job.waiter = None
                else:
                    waiter.got = Progress()

    def _orphans(self, jobs: list[RelayJob], now: float) -> None:
        with self.lock:
            for job in jobs:
                quiet = now - job.last_seen
                if job.ended:
                    if job.released or quiet > self.settings.forget_after:
                        self.jobs.pop(job.handle.key, None)
                    continue
                if not job.cancel_requested and quiet > self.orphan_timeout:
                    log.warning("session %s: HPC job %s of pod %s: no connector for %.0fs "
                                "(orphan_timeout): cancelling it", self.key[:8], job.handle.job_id,
                                job.owner, quiet)
                    job.cancel_requested = True
                    job.cancel_asked = now
                    self.counters["orphans_cancelled"] += 1
                    self._wake.set()
                if job.cancel_requested and job.cancel_sent is not None and quiet > 2 * self.orphan_timeout:
                    self.jobs.pop(job.handle.key, None)  # nobody left to tell

