"""Cluster policy: one test per rule, defaults and pinning, loading, and hot reload."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from webhook.annotations import JOB_SPEC, PREFIX, AdmissionDenied
from webhook.config import WebhookConfig
from webhook.mutation import mutate
from webhook.policy import Policy, PolicyError, PolicyStore

CONFIG = WebhookConfig()

POLICY = """
rules:
- name: research
  namespaces: ["research-*", "lab"]
  profiles: ["prometheus", "ares-*"]
  runtimes: [apptainer, singularity]
  images: ["registry.example.org/", "/shared/sif/"]
  maxTime: "2-00:00:00"
  maxGpus: 4
  maxNodes: 4
  allowScripts: false
  defaults:
    partition: plgrid
    account: plgresearch
    qos: normal
    time: "04:00:00"
    runtime: apptainer
- name: sandbox
  namespaces: ["sandbox"]
"""


def pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {f"{PREFIX}backend": "prometheus",
                                     **{PREFIX + k.replace("_", "-"): v
                                        for k, v in annotations.items()}}},
        "spec": {"containers": [{"name": "main", "image": "registry.example.org/app:1",
                                 "command": ["run"]}]},
    }


def run(p: dict[str, Any], namespace: str = "research-x", policy: str = POLICY) -> dict[str, Any]:
    result = mutate(p, namespace, CONFIG, Policy.from_yaml(policy))
    return json.loads(result["metadata"]["annotations"][JOB_SPEC])


def violation(p: dict[str, Any], namespace: str = "research-x", policy: str = POLICY) -> str:
    with pytest.raises(AdmissionDenied) as info:
        run(p, namespace, policy)
    assert info.value.code == 403
    return info.value.message


def test_defaults_apply_when_the_pod_does_not_say() -> None:
    spec = run(pod())
    assert spec["resources"] == {"queue": "plgrid", "account": "plgresearch", "qos": "normal",
                                 "time_limit": 4 * 3600, "nodes": 1}  # nodes: under maxNodes
    assert spec["runtime"] == "apptainer"
    assert spec["hpc_image"] == "docker://registry.example.org/app:1"  # pinned


def test_the_pod_wins_over_defaults() -> None:
    spec = run(pod(partition="gpu", account="a", qos="q", time="10", runtime="singularity"))
    assert spec["resources"] == {"queue": "gpu", "account": "a", "qos": "q", "time_limit": 600,
                                 "nodes": 1}
    assert spec["runtime"] == "singularity"


def test_profiles_rule() -> None:
    p = pod()
    p["metadata"]["annotations"][f"{PREFIX}backend"] = "other"
    assert violation(p) == ('policy rule "research": hpc.offload/backend "other" is not an '
                            "allowed profile; allowed: prometheus, ares-*")
    p["metadata"]["annotations"][f"{PREFIX}backend"] = "ares-gpu"
    run(p)


def test_runtimes_rule() -> None:
    assert violation(pod(runtime="podman")) == (
        'policy rule "research": hpc.offload/runtime "podman" is not allowed; allowed: '
        "apptainer, singularity")


def test_images_rule() -> None:
    message = violation(pod(image="docker://evil.example.org/x"))
    assert message.startswith('policy rule "research": image "docker://evil.example.org/x" is '
                              "not allowed; images must start with one of: registry.example.org/")
    run(pod(image="/shared/sif/app.sif"))
    p = pod()
    p["spec"]["containers"][0]["image"] = "registry.example.org.evil.com/x"
    assert "is not allowed" in violation(p)


def test_max_time_rule() -> None:
    assert violation(pod(time="3-00:00:00")) == (
        'policy rule "research": hpc.offload/time "3-00:00:00" exceeds the maximum 2-00:00:00')
    assert "exceeds the maximum" in violation(pod(time="UNLIMITED"))
    run(pod(time="2-00:00:00"))


def test_max_time_applies_to_active_deadline() -> None:
    p = pod()
    p["spec"]["activeDeadlineSeconds"] = 3 * 86400
    assert "exceeds the maximum" in violation(p)


def test_max_nodes_rule() -> None:
    assert violation(pod(nodes="5")) == (
        'policy rule "research": hpc.offload/nodes 5 exceeds the maximum 4')


def test_max_gpus_rule() -> None:
    assert "asks for 6 GPUs" in violation(pod(gpus="3", nodes="2"))
    p = pod()
    p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "8"}}
    assert "asks for 8 GPUs" in violation(p)
    assert "asks for 5 GPUs" in violation(pod(sbatch_args="--gpus-per-node=a100:5"))
    assert "asks for 6 GPUs" in violation(pod(ntasks="3", sbatch_args="--gpus-per-task=2"))
    run(pod(gpus="a100:4"))


def test_scripts_rule() -> None:
    assert violation(pod(script="#!/bin/bash\nhostname\n")).startswith(
        'policy rule "research": hpc.offload/script is not allowed (allowScripts: false)')


def test_unmatched_namespace_is_denied_by_default() -> None:
    assert violation(pod(), namespace="default") == (
        'policy: no rule admits namespace "default" (rules: research, sandbox; unmatched: deny);'
        " ask a cluster administrator to add one")


def test_unmatched_allow_and_rule_without_limits() -> None:
    spec = run(pod(runtime="podman"), namespace="default", policy=POLICY + "unmatched: allow\n")
    assert spec["runtime"] == "podman"
    spec = run(pod(runtime="none", script="#!/bin/sh\ntrue\n"), namespace="sandbox")
    assert "resources" not in spec


def test_first_matching_rule_wins() -> None:
    policy = POLICY.replace("- name: sandbox\n  namespaces: [\"sandbox\"]",
                            "- name: sandbox\n  namespaces: [\"*\"]")
    assert run(pod(runtime="podman"), namespace="sandbox", policy=policy)["runtime"] == "podman"
    assert "runtime" in violation(pod(runtime="podman"), namespace="lab", policy=policy)


def test_runtime_and_time_are_pinned_without_defaults() -> None:
    policy = "rules:\n- name: r\n  runtimes: [charliecloud]\n  maxTime: '60'\n"
    spec = run(pod(), namespace="any", policy=policy)
    assert spec["runtime"] == "charliecloud" and spec["resources"]["time_limit"] == 3600


@pytest.mark.parametrize(
    "text, expected",
    [
        ("rules: {}", "rules: must be a list"),
        ("rules: [{name: a, bogus: 1}]", "unknown key 'bogus'"),
        ("rules: [{name: a, runtimes: [docker]}]", "runtime 'docker' is not one of"),
        ("rules: [{name: a, maxTime: 2:00:00}]", "must be a quoted SLURM time"),
        ("rules: [{name: a, maxTime: 'soon'}]", "is not a time limit"),
        ("rules: [{name: a, maxGpus: many}]", "is not a whole number"),
        ("rules: [{name: a, allowScripts: 'no'}]", "must be true or false"),
        ("rules: [{name: a, defaults: {partition: 'a b'}}]", "is not a valid name"),
        ("rules: [{name: a, runtimes: [podman], defaults: {runtime: none}}]", "not in runtimes"),
        ("rules: [{name: a}, {name: a}]", "duplicate rule name"),
        ("unmatched: maybe", "must be deny or allow"),
        ("rules: [a: b", "not valid YAML"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_bad_policy_files_are_refused(text: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        Policy.from_yaml(text)


def test_empty_file_allows_nothing_outside_rules() -> None:
    assert Policy.from_yaml("").rules == ()
    assert Policy.from_yaml("rules: []\nunmatched: allow").rule_for("x") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


def test_store_reloads_on_change_and_keeps_the_last_good(tmp_path: Path,
                                                         caplog: Any) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, "rules: [{name: one}]", 1)
    clock = Clock()
    store = PolicyStore(path, clock=clock)
    first = store.get()
    assert first is not None and first.rules[0].name == "one"

    _write(path, "rules: [{name: two}]", 2)
    assert store.get() is first  # checked at most once per interval
    clock.now += 1.5
    second = store.get()
    assert second is not None and second.rules[0].name == "two"

    clock.now += 1.5
    assert store.get() is second  # unchanged stat: no re-read

    with caplog.at_level(logging.ERROR, logger="webhook.policy"):
        _write(path, "rules: [{name: three, bogus: 1}]", 3)
        clock.now += 1.5
        assert store.get() is second
        assert store.last_error and "bogus" in store.last_error
        assert "keeping the last good policy" in caplog.text
        path.unlink()
        clock.now += 1.5
        assert store.get() is second

    _write(path, "rules: [{name: four}]", 4)
    clock.now += 1.5
    fourth = store.get()
    assert fourth is not None and fourth.rules[0].name == "four" and store.last_error is None


def test_store_same_content_is_not_reparsed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, "rules: [{name: one}]", 1)
    clock = Clock()
    store = PolicyStore(path, clock=clock)
    first = store.get()
    _write(path, "rules: [{name: one}]", 9)  # a ConfigMap resync: new mtime, same bytes
    clock.now += 2
    assert store.get() is first


def test_store_without_a_file_allows_everything(tmp_path: Path) -> None:
    assert PolicyStore(None).get() is None
    with pytest.raises(PolicyError):
        PolicyStore(tmp_path / "missing.yaml")
    policy = Policy.from_yaml("rules: []")
    assert PolicyStore.of(policy).get() is policy
