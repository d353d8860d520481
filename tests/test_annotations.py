"""Annotation validation: one case per error, each message naming annotation, value, remedy."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.annotations import (
    INPUT_KEYS,
    KNOWN_KEYS,
    PREFIX,
    AdmissionDenied,
    parse_annotations,
)

B = {"hpc.offload/backend": "cluster"}


def deny(extra: dict[str, object]) -> AdmissionDenied:
    with pytest.raises(AdmissionDenied) as info:
        parse_annotations({**B, **extra})
    assert info.value.code == 400
    return info.value


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("runtime", "docker", 'hpc.offload/runtime: "docker" is not allowed; use one of '
                              "singularity, apptainer, charliecloud, podman, enroot, none"),
        ("logs", "tail", 'hpc.offload/logs: "tail" is not allowed; use one of stream, job-only, end, none'),
        ("container", "Main_1", 'hpc.offload/container: "Main_1" is not allowed'),
        ("image", "docker://x y", 'hpc.offload/image: "docker://x y" is not allowed'),
        ("image", "--bind=/:/host", 'hpc.offload/image: "--bind=/:/host" is not allowed'),
        ("image", "img;rm -rf /", "without spaces, quotes or shell characters"),
        ("partition", "gpu queue", "hpc.offload/partition: 'gpu queue' is not a valid name"),
        ("account", "acc$(id)", "hpc.offload/account: 'acc$(id)' is not a valid name"),
        ("qos", "", "hpc.offload/qos: '' is not a valid name"),
        ("time", "2 hours", "hpc.offload/time: '2 hours' is not a time limit; use minutes"),
        ("nodes", "two", "hpc.offload/nodes: 'two' is not a whole number"),
        ("nodes", "0", "hpc.offload/nodes: '0' must be 1 or more"),
        ("ntasks", "-4", "hpc.offload/ntasks: '-4' must be 1 or more"),
        ("gpus", "lots", 'hpc.offload/gpus: "lots" is not allowed; use a GPU count (2) or '
                         "TYPE:COUNT (a100:2)"),
        ("gpus", "a100:x", 'hpc.offload/gpus: "a100:x" is not allowed'),
        ("sbatch-args", "--output=/etc/passwd", "hpc.offload/sbatch-args: '--output' is not "
                                                "allowed; allowed options:"),
        ("sbatch-args", "--constraint", "hpc.offload/sbatch-args: --constraint needs a value"),
        ("sbatch-args", "--exclusive=yes", "hpc.offload/sbatch-args: --exclusive takes no value"),
        ("sbatch-args", "--constraint='a b'", "may not contain spaces, quotes or backslashes"),
        ("script", "   ", 'hpc.offload/script: "   " is not allowed; give a batch script'),
        ("script", "echo hi\n", 'hpc.offload/script: "echo hi" is not allowed; sbatch needs a '
                                "script whose first line is #!"),
        ("script", "#!/bin/sh\n\x00", "hpc.offload/script: the script may not contain NUL"),
        ("poll-interval", "often", "hpc.offload/poll-interval: 'often' is not a duration"),
        ("poll-interval", "100ms", "hpc.offload/poll-interval: '100ms' is below the minimum"),
        ("stage-in", "/data/in.csv", "hpc.offload/stage-in: '/data/in.csv' is not SRC:DST"),
        ("stage-in", "/data/../etc:x", "hpc.offload/stage-in: '/data/../etc' may not contain"),
        ("stage-in", "data/in.csv:in", 'the pod path "data/in.csv" must be absolute'),
        ("stage-out", " , ", 'hpc.offload/stage-out: " , " is not allowed; use podPath:hpcPath'),
        ("status", "done", 'hpc.offload/status: "done" is not allowed; it is set by the webhook'),
    ],
)
def test_each_bad_value_is_denied_with_a_clear_message(key: str, value: str, expected: str) -> None:
    assert expected in deny({PREFIX + key: value}).message


@pytest.mark.parametrize("value", ["Prometheus", "-x", "a_b", "a..b", "x" * 254, ""])
def test_backend_must_be_a_dns_subdomain(value: str) -> None:
    with pytest.raises(AdmissionDenied) as info:
        parse_annotations({"hpc.offload/backend": value})
    assert info.value.message.startswith(f'hpc.offload/backend: "{value}" is not allowed;')
    assert "ConfigMap" in info.value.message


def test_unknown_key_is_denied_with_a_suggestion() -> None:
    message = deny({"hpc.offload/partiton": "gpu"}).message
    assert message.startswith("hpc.offload/partiton: unknown annotation (did you mean "
                              "hpc.offload/partition?)")
    assert "stage-out" in message


def test_other_prefixes_are_ignored() -> None:
    parsed = parse_annotations({**B, "hpc.offload.io/x": "1", "example.org/y": "z"})
    assert parsed.backend == "cluster"


def test_non_string_value_is_denied() -> None:
    assert 'quote it in YAML ("2")' in deny({"hpc.offload/nodes": 2}).message


def test_options_without_backend_are_denied() -> None:
    with pytest.raises(AdmissionDenied) as info:
        parse_annotations({"hpc.offload/partition": "gpu"})
    assert info.value.message.startswith("hpc.offload/backend: missing")


def test_no_annotations_means_not_offloaded() -> None:
    assert not parse_annotations(None).offloaded
    assert not parse_annotations({"app": "x"}).offloaded


def test_valid_values_are_normalised() -> None:
    parsed = parse_annotations({
        **B, "hpc.offload/runtime": "Apptainer", "hpc.offload/logs": "END",
        "hpc.offload/gpus": "a100:2", "hpc.offload/poll-interval": "5m",
        "hpc.offload/time": "1-00:00:00", "hpc.offload/nodes": "3",
        "hpc.offload/stage-in": "/a:b, /c:d",
        "hpc.offload/job-spec": "{}", "hpc.offload/status": "injected",
    })
    assert parsed.runtime == "apptainer" and parsed.logs == "end"
    assert parsed.gpus == "gpu:a100:2" and parsed.poll_interval == 300.0
    assert parsed.nodes == 3 and len(parsed.stage_in) == 2 and parsed.injected
    assert parse_annotations({**B, "hpc.offload/gpus": "0"}).gpus == ""
    assert parse_annotations({**B, "hpc.offload/gpus": "2"}).gpus == "gpu:2"


def test_output_keys_are_known() -> None:
    assert set(KNOWN_KEYS) == set(INPUT_KEYS) | {"job-spec", "status"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.one_of(st.sampled_from([PREFIX + k for k in KNOWN_KEYS]), st.text(max_size=20)),
    st.one_of(st.text(max_size=40), st.integers(), st.none()),
    max_size=6,
))
def test_random_annotations_parse_or_deny(annotations: dict[str, object]) -> None:
    try:
        parse_annotations(annotations)
    except AdmissionDenied as exc:
        assert exc.code == 400 and exc.message.startswith(PREFIX) or "annotations" in exc.message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(INPUT_KEYS), st.text(max_size=60))
def test_random_value_for_each_key_names_the_key(key: str, value: str) -> None:
    try:
        parse_annotations({**B, PREFIX + key: value})
    except AdmissionDenied as exc:
        assert exc.message.startswith(PREFIX + key) or exc.message.startswith(PREFIX + "backend")
        assert len(exc.message) < 2000
