"""The relay session's costs over many jobs, counted: scheduler status requests per monitoring
period and the jobs whose output one tick reads. The session's thread is stopped and the test
drives its ticks with its own clock, so every count is exact (no time is asserted). The status
side runs against the in-memory fake manager; the read side against the real reader command on
this machine (the login node's python3 or perl)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from connector.backends.base import JobHandle, JobRequest, JobState, JobStatus
from connector.backends.shell import ShellBackend
from connector.profile import Profile
from connector.spec import JobSpec, PodRef
from relay import reader
from relay.auth import Identity
from relay.session import RelayJob, Session, Settings, Waiter
from tests.fakes.backend import FakeBackend

PERIOD = 30.0
OWNER = Identity("bench", "pod", "uid")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The server's loop, never run: the session only queues its answers on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def stopped_session(backend: object, **settings: float) -> Session:
    """A session whose thread has ended: the test calls `_tick` itself."""
    session = Session("k" * 16, "bench", backend, Settings(**settings), PERIOD, None, lambda: None)  # type: ignore[arg-type]
    session.close()
    session.thread.join(10)
    assert not session.thread.is_alive()
    return session


def submit(fake: FakeBackend, count: int) -> list[JobHandle]:
    spec = JobSpec(command=["true"], pod=PodRef("bench", "pod", "uid"))
    return [fake.submit(JobRequest(spec, f"/hpc/work/hpco-{n}")) for n in range(count)]


class Connectors:
    """Every job's connector: a long poll again once answered, from the output it got."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self.session, self.loop = session, loop
        self.polls: dict[str, Waiter] = {}
        self.output: dict[str, bytes] = {}

    def poll(self) -> None:
        for job in list(self.session.jobs.values()):
            if job.waiter is not None:
                continue
            key = job.handle.key
            answered = self.polls.get(key)
            got = self.output[key] = self.output.get(key, b"") + (answered.got.stdout if answered else b"")
            self.session.wait(job, self.loop, len(got), 0, True, job.version)
            assert job.waiter is not None
            self.polls[key] = job.waiter

    def tick(self, now: float) -> None:
        self.poll()
        self.session._tick(now)  # noqa: SLF001
        self.poll()  # take what the tick answered


def run(session: Session, loop: asyncio.AbstractEventLoop, start: float, seconds: int) -> float:
    """`seconds` ticks a second apart from `start` (the session's clock: time.monotonic, which
    registrations read); returns the next second."""
    connectors = Connectors(session, loop)
    for second in range(seconds):
        connectors.tick(start + second)
    return start + seconds


def test_jobs_whose_marker_stays_without_an_end_cost_no_status_request_a_second(loop):
    """A job can show its end marker while the manager keeps it running or queued (a job
    requeued after its first run wrote the marker; a long epilogue): asked again quickly for
    `quick_for` s, then with everyone once a period, not once a second for good."""
    fake = FakeBackend()
    session = stopped_session(fake)
    handles = submit(fake, 30)
    for handle in handles:
        session.register(handle, OWNER, PERIOD)
    for job_id in [h.job_id for h in handles[:3]]:  # marker written; the manager says PENDING again
        fake.jobs[job_id].marker = 0
        fake.jobs[job_id].requeued = True
    later = run(session, loop, time.monotonic(), 30)
    assert all(job.marker == 0 for job in list(session.jobs.values())[:3])
    before = fake.status_requests
    run(session, loop, later, 60)  # two whole periods later
    assert fake.status_requests - before == 2


def test_a_burst_of_new_jobs_is_asked_once_together_not_once_a_second(loop):
    fake = FakeBackend()
    session = stopped_session(fake)
    for handle in submit(fake, 300):
        session.register(handle, OWNER, PERIOD)
    run(session, loop, time.monotonic(), 30)
    assert fake.status_requests == 1
    assert all(job.status is not None for job in session.jobs.values())


def test_a_cancelled_job_is_asked_quickly_until_it_ended(loop):
    fake = FakeBackend()
    fake.cancel_takes = 2  # CANCELLED at the third status request after the scancel
    session = stopped_session(fake)
    handles = submit(fake, 50)
    for handle in handles:
        session.register(handle, OWNER, PERIOD)
    later = run(session, loop, time.monotonic(), 5)
    session.cancel(session.jobs[handles[0].key])
    run(session, loop, later, 5)
    assert session.jobs[handles[0].key].ended
    assert fake.cancel_requests == 1


class LocalShell(ShellBackend):
    """A shell backend on this machine (the batch reader runs here); every job runs."""

    type_name = "local-shell"
    access = "local"

    def __init__(self) -> None:
        super().__init__(Profile(backend="local-shell", configuration={"workdir": "/tmp"}))

    def submit(self, request: JobRequest) -> JobHandle:
        raise NotImplementedError

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {job_id: JobStatus(job_id, JobState.RUNNING) for job_id in job_ids}

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def find(self, request: JobRequest) -> JobHandle | None:
        return None


def jobs_with_output(session: Session, directory: Path, count: int, size: int) -> list[RelayJob]:
    jobs = []
    for n in range(count):
        job_dir = directory / f"hpco-{n}"
        job_dir.mkdir()
        handle = JobHandle.rendered(str(1000 + n), str(job_dir))
        Path(handle.stdout).write_bytes(f"{n:0{size - 1}d}\n".encode())
        jobs.append(session.register(handle, OWNER, PERIOD))
    return jobs


def test_a_thousand_quiet_jobs_are_all_read_in_one_command_in_one_tick(loop, tmp_path):
    """The tick's budget counts the bytes read, not what each read may return: before, 16 MiB
    over 256 KiB a stream let 32 jobs be read a tick, and the next tick started one job on."""
    session = stopped_session(LocalShell())
    jobs = jobs_with_output(session, tmp_path, 1000, 16)
    connectors = Connectors(session, loop)
    connectors.tick(time.monotonic())
    assert session.counters["read_commands"] == 1
    assert [connectors.output[job.handle.key] for job in jobs] == [f"{n:015d}\n".encode() for n in range(1000)]


def test_a_spent_budget_is_read_first_at_the_next_tick(loop, tmp_path):
    """A tick's budget of 10 jobs' output over 50 jobs: 5 ticks read every job once (before:
    the limits were counted, one job a tick, and the next tick began one job further)."""
    session = stopped_session(LocalShell(), tick_budget=1000)
    jobs = jobs_with_output(session, tmp_path, 50, 100)
    connectors = Connectors(session, loop)
    start = time.monotonic()
    for second in range(5):
        connectors.tick(start + second)
    assert session.counters["read_commands"] == 5
    assert [connectors.output[job.handle.key] for job in jobs] == [f"{n:099d}\n".encode() for n in range(50)]


@pytest.mark.parametrize("interpreter", ["python3", "perl"])
def test_the_reader_stops_where_its_budget_is_spent(interpreter, tmp_path):
    """python3 where the login node has it, else perl: the same answers, `=` once the bytes
    read reach the budget (here after the second of three files)."""
    if shutil.which(interpreter) is None:
        pytest.skip(f"no {interpreter} here")
    paths = []
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 100)
        paths.append(str(tmp_path / name))
    argv = ["python3", "-I", "-S", "-c", reader.PYTHON] if interpreter == "python3" else ["perl", "-e", reader.PERL]
    reads = [(str(tmp_path / "missing"), 0, 10), (paths[0], 90, 256), (paths[1], 0, 256), (paths[2], 0, 256)]
    done = subprocess.run(argv, input=reader.encode(reads, [paths[2]], budget=110), capture_output=True, check=True)
    assert reader.decode(done.stdout.decode(), len(reads)) == [None, b"a" * 10, b"b" * 100]
    whole = subprocess.run(argv, input=reader.encode(reads, []), capture_output=True, check=True)
    assert reader.decode(whole.stdout.decode(), len(reads)) == [None, b"a" * 10, b"b" * 100, b"c" * 100]


def test_a_cancel_asked_during_a_slow_phase_is_sent_in_the_same_tick(loop):
    """Pods deleted while the tick asks the scheduler (slow under a delete storm): their
    cancels go out before the tick's next phase, not a tick later."""
    fake = FakeBackend()
    session = stopped_session(fake)
    jobs = [session.register(handle, OWNER, PERIOD) for handle in submit(fake, 3)]
    asked = fake.statuses

    def statuses_while_a_pod_is_deleted(job_ids: Sequence[str]) -> dict[str, JobStatus]:
        session.cancel(jobs[0])
        return asked(job_ids)

    fake.statuses = statuses_while_a_pod_is_deleted  # type: ignore[method-assign]
    session._tick(time.monotonic())  # noqa: SLF001
    assert fake.cancel_requests == 1 and fake.jobs[jobs[0].handle.job_id].cancel_requested
    assert not any(fake.jobs[job.handle.job_id].cancel_requested for job in jobs[1:])


def storm(session: Session, connectors: Connectors, jobs: list[RelayJob], start: float) -> float:
    """One pod deleted a second (a cancel asked at each tick) from `start`; returns the next second."""
    for second, job in enumerate(jobs):
        session.cancel(job)
        job.cancel_asked = start + second  # the test's clock
        connectors.tick(start + second)
    return start + len(jobs)


def twenty_followed_jobs(
    loop: asyncio.AbstractEventLoop,
) -> tuple[FakeBackend, Session, list[RelayJob], Connectors, float]:
    """20 jobs followed for 5 s (their first listing done); returns the next second too."""
    fake = FakeBackend()
    session = stopped_session(fake)
    jobs = [session.register(handle, OWNER, PERIOD) for handle in submit(fake, 20)]
    connectors = Connectors(session, loop)
    return fake, session, jobs, connectors, run(session, loop, time.monotonic(), 5)


def test_a_delete_storm_sends_its_cancels_without_a_listing_between_them(loop):
    """Under a delete storm each listing is slow and held every cancel asked meanwhile behind it
    (a storm of 100 pods: cancels waited 4.4 s, the last jobs left the queue 11.7 s after the
    delete): the listing waits until the cancels pause, then asks the cancelled jobs at once."""
    fake, session, jobs, connectors, later = twenty_followed_jobs(loop)
    before = fake.status_requests
    later = storm(session, connectors, jobs[:4], later)
    assert fake.cancel_requests == 4 and all(fake.jobs[job.handle.job_id].cancel_requested for job in jobs[:4])
    assert fake.status_requests == before  # no listing between the cancels
    run(session, loop, later + 1, 3)  # the storm has passed
    assert fake.status_requests > before
    assert all(job.ended for job in jobs[:4]) and not any(job.ended for job in jobs[4:])


def test_a_storm_that_does_not_end_holds_the_listing_a_few_seconds_at_most(loop):
    fake, session, jobs, connectors, later = twenty_followed_jobs(loop)
    before = fake.status_requests
    storm(session, connectors, jobs[:12], later)  # 12 s: hold_max 5 s
    assert fake.status_requests - before >= 2
    assert any(job.ended for job in jobs[:12])
