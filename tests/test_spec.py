"""Job spec validation: every bad field is refused with a message naming it."""

from __future__ import annotations

import pytest

from connector.errors import SpecError
from connector.spec import (
    JobSpec,
    parse_duration,
    parse_sbatch_args,
    seconds_to_slurm_time,
    slurm_time_to_seconds,
)

BASE = {"image": "python:3.11", "command": ["python3", "-V"]}


def test_round_trip():
    spec = JobSpec.from_dict({**BASE, "slurm": {"partition": "debug", "time": "10"},
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
        ({"slurm": {"time": "ten minutes"}}, "time: 'ten minutes' is not a SLURM time"),
        ({"slurm": {"mem": "lots"}}, "mem: 'LOTS' is not a SLURM memory size"),
        ({"slurm": {"nodes": 0}}, "nodes: 0 must be 1 or more"),
        ({"slurm": {"ntasks": "x"}}, "ntasks: 'x' is not a whole number"),
        ({"slurm": {"partition": "a b"}}, "partition: 'a b' is not a valid name"),
        ({"slurm": {"color": "red"}}, "slurm: unknown option(s): color"),
        ({"slurm": {"extra_args": ["--output=/etc/passwd"]}}, "'--output' is not allowed"),
        ({"slurm": {"extra_args": ["--constraint"]}}, "--constraint needs a value"),
        ({"slurm": {"extra_args": ["--exclusive=yes"]}}, "--exclusive takes no value"),
        ({"slurm": {"extra_args": ["--constraint=a b"]}}, "may not contain spaces"),
        ({"poll_interval": "0.1s"}, "below the minimum"),
        ({"poll_interval": "soon"}, "is not a duration"),
        ({"stage_in": "nocolon"}, "stage-in: 'nocolon' is not SRC:DST"),
        ({"stage_out": "out/../../etc:/x"}, "may not contain '..'"),
        ({"script": "   "}, "script: is empty"),
        ({"pod": {"uid": "bad uid!"}}, "pod.uid"),
        ({"version": 2}, "version: 2 is not supported"),
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
def test_slurm_times(value, seconds):
    assert slurm_time_to_seconds(value) == seconds


def test_deadline_to_slurm_time():
    assert seconds_to_slurm_time(59) == "00:01:00"
    assert seconds_to_slurm_time(3600) == "01:00:00"
    assert seconds_to_slurm_time(90000) == "1-01:00:00"


def test_allowed_sbatch_args_pass():
    assert parse_sbatch_args("--constraint=a100 --exclusive") == ["--constraint=a100", "--exclusive"]
