"""Job spec validation: every bad field is refused with a message naming it."""

from __future__ import annotations

import pytest

from connector.backends.slurm_options import format_time, parse_sbatch_args, sbatch_options
from connector.errors import SpecError
from connector.spec import JobSpec, Resources, parse_duration, parse_memory_mb, parse_time_limit

BASE = {"image": "python:3.11", "command": ["python3", "-V"]}


def test_round_trip():
    spec = JobSpec.from_dict({**BASE, "resources": {"queue": "debug", "time_limit": 600},
                              "stage_in": "/data/in:in", "poll_interval": "5s"})
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.poll_interval == 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runtime": "docker"}, "runtime: 'docker' is not one of"),
        ({"logs": "tail"}, "logs: 'tail' is not one of"),
        ({"env": {"1BAD": "x"}}, "env: '1BAD' is not a valid environment variable name"),
        ({"env_passthrough": ["A-B"]}, "env: 'A-B'"),
        ({"env": {"A": "x\x00y"}}, "without NUL"),
        ({"command": "python3"}, "command: must be a list of strings"),
        # version 1 specs (SLURM's words) are still read, and still checked
        ({"slurm": {"time": "ten minutes"}}, "time: 'ten minutes' is not a time limit"),
        ({"slurm": {"mem": "lots"}}, "mem: 'lots' is not a memory size"),
        ({"slurm": {"nodes": 0}}, "nodes: 0 must be a whole number from 1"),
        ({"slurm": {"partition": "a b"}}, "queue: 'a b' is not a valid name"),
        ({"resources": {"tasks": "x"}}, "tasks: 'x' must be a whole number"),
        ({"resources": {"nodes": 10**12}}, "nodes: 1000000000000 must be a whole number from 1 to"),
        ({"resources": {"time_limit": -5}}, "time_limit: -5 must be seconds"),
        ({"resources": {"queue": "a\n"}}, "queue: 'a\\n' is not a valid name"),
        ({"resources": {"color": "red"}}, "resources: unknown option(s): color"),
        ({"resources": {"extra_args": ["-x"]}}, "'-x' is not an option of the form --name"),
        ({"resources": {"extra_args": ["--constraint=a b"]}}, "may not contain spaces"),
        ({"poll_interval": "0.1s"}, "below the minimum"),
        ({"poll_interval": "soon"}, "is not a duration"),
        ({"stage_in": "nocolon"}, "stage-in: 'nocolon' is not SRC:DST"),
        ({"stage_out": "out/../../etc:/x"}, "may not contain '..'"),
        ({"script": "   "}, "script: is empty"),
        ({"pod": {"uid": "bad uid!"}}, "pod.uid"),
        ({"version": 3}, "version: 3 is not supported"),
        ({"colour": 1}, "unknown job spec field(s): colour"),
    ],
)
def test_bad_fields_are_refused(change, message):
    with pytest.raises(SpecError) as err:
        JobSpec.from_dict({**BASE, **change})
    assert message in str(err.value)


def test_not_json():
    with pytest.raises(SpecError, match="not valid JSON"):
        JobSpec.from_json("{")
    with pytest.raises(SpecError, match="must be a JSON object"):
        JobSpec.from_json("[1]")


@pytest.mark.parametrize(("runtime", "fields"), [("charliecloud", {"image": "/img"}), ("none", {})])
def test_runtimes_without_entrypoint_need_a_command(runtime, fields):
    with pytest.raises(SpecError, match="command: required"):
        JobSpec.from_dict({"runtime": runtime, **fields}).check_runnable()


def test_an_image_is_needed_unless_runtime_none():
    with pytest.raises(SpecError, match="image: required"):
        JobSpec.from_dict({"command": ["x"]}).check_runnable()
    JobSpec.from_dict({"command": ["x"], "runtime": "none"}).check_runnable()


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("10", 10),
                                                (2, 2), ("1500ms", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("30", 1800), ("1:30", 90), ("01:00:00", 3600),
                                                 ("2-00", 172800), ("1-02:03:04", 93784),
                                                 ("UNLIMITED", None)])
def test_time_limits(value, seconds):
    assert parse_time_limit(value) == (seconds or 0)


def test_sbatch_time_format():
    assert format_time(59) == "00:01:00"
    assert format_time(3600) == "01:00:00"
    assert format_time(90000) == "1-01:00:00"
    assert format_time(0) == "UNLIMITED"


def test_memory_sizes():
    assert [parse_memory_mb(v) for v in ("2048", "512M", "4G", "1T", "100K")] == [2048, 512, 4096, 2**20, 1]


def test_a_version_1_spec_reads_as_neutral_resources():
    spec = JobSpec.from_dict({**BASE, "slurm": {"partition": "debug", "account": "grant", "time": "01:30:00",
                                                 "mem": "4G", "gres": "gpu:a100:2", "ntasks": 3,
                                                 "extra_args": ["--exclusive"]}})
    assert spec.resources == Resources(queue="debug", account="grant", time_limit=5400, memory_mb=4096,
                                       gpus=2, gpu_type="a100", tasks=3, extra_args=("--exclusive",))
    assert spec.version == 2 and "slurm" not in spec.to_dict()


def test_slurm_maps_the_neutral_resources_and_checks_its_own_allow_list():
    res = Resources(queue="debug", time_limit=5400, memory_mb=512, gpus=2, tasks=2, extra_args=("--exclusive",))
    assert sbatch_options(res) == ["--partition=debug", "--time=01:30:00", "--ntasks=2", "--mem=512M",
                                   "--gres=gpu:2", "--exclusive"]
    with pytest.raises(SpecError, match="'--output' is not allowed"):
        sbatch_options(Resources(extra_args=("--output=/etc/passwd",)))
    with pytest.raises(SpecError, match="--constraint needs a value"):
        parse_sbatch_args(["--constraint"])
    with pytest.raises(SpecError, match="--exclusive takes no value"):
        parse_sbatch_args(["--exclusive=yes"])


def test_allowed_sbatch_args_pass():
    assert parse_sbatch_args("--constraint=a100 --exclusive") == ["--constraint=a100", "--exclusive"]


def test_squeue_placeholders_are_not_values():
    from connector.backends.slurm import status_from_listing

    pending = status_from_listing({"JobID": "5", "State": "PENDING", "Reason": "Priority", "exit_code": "0",
                                   "BatchHost": "n/a", "StartTime": "N/A", "RestartCnt": "0"}, 3)
    assert (pending.node, pending.start_estimate, pending.queue_position) == (None, None, 3)
    done = status_from_listing({"JobID": "5", "State": "FAILED", "Reason": "NonZeroExitCode",
                                "exit_code": "1792", "BatchHost": "vm", "StartTime": "2026-11-30T10:00:00",
                                "RestartCnt": "0"})
    assert (done.exit_code, done.signal, done.node) == (7, 0, "vm")
