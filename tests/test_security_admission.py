"""Issue 12, the admission side: items 3, 4, 7, 11 and 15.

Every case goes through `handle_review` (what the server runs for each request) with a pod a
tenant who may only create pods could write; the answer is what the API server would get.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from webhook.admission import handle_review
from webhook.annotations import INJECTED, JOB_SPEC, STATUS, parse_annotations
from webhook.config import WebhookConfig
from webhook.policy import Policy, PolicyStore

REPO = Path(__file__).resolve().parent.parent
CONFIG = WebhookConfig()
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
POLICY = Policy.from_yaml("""
rules:
- name: lab
  namespaces: [lab]
  profiles: [site]
  maxTime: "01:00:00"
  maxNodes: 1
""")


def pod(**annotations: str) -> dict[str, Any]:
    """A pod as the API server hands it to the webhook: the ServiceAccount admission plugin
    (which runs before webhooks) has already mounted the token into every container."""
    token = {"name": "kube-api-access-x1y2z", "readOnly": True, "mountPath": SA_PATH}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "lab",
                     "annotations": {"hpc.offload/backend": "site",
                                     "hpc.offload/container": "main",
                                     **{f"hpc.offload/{k.replace('_', '-')}": v
                                        for k, v in annotations.items()}}},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.example.org/app:1", "command": ["run"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}, dict(token)]},
                {"name": "sidecar", "image": "proxy:1", "volumeMounts": [dict(token)]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": "kube-api-access-x1y2z", "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token"}}]}}],
        },
    }


def review(obj: Any, operation: str = "CREATE", old: Any = None, namespace: str = "lab") -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u-1", "namespace": namespace, "operation": operation,
                                   "resource": {"group": "", "version": "v1", "resource": "pods"},
                                   "object": obj, "oldObject": old}}).encode()


def answer(obj: Any, operation: str = "CREATE", old: Any = None,
           policy: Policy | None = POLICY) -> dict[str, Any]:
    status, body = handle_review(review(obj, operation, old), CONFIG, PolicyStore.of(policy))
    assert status == 200, body
    response: dict[str, Any] = body["response"]
    if not response["allowed"]:
        assert "internal error" not in response["status"]["message"]
    return response


def admitted(obj: dict[str, Any], policy: Policy | None = POLICY) -> dict[str, Any]:
    response = answer(obj, policy=policy)
    assert response["allowed"], response["status"]["message"]
    if "patch" not in response:
        return obj
    result: dict[str, Any] = jsonpatch.apply_patch(
        obj, json.loads(base64.b64decode(response["patch"])))
    return result


def refused(obj: Any, operation: str = "CREATE", old: Any = None,
            policy: Policy | None = POLICY) -> str:
    response = answer(obj, operation, old, policy)
    assert response["allowed"] is False, "expected a denial"
    message: str = response["status"]["message"]
    return message


def connector(mutated: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in mutated["spec"]["containers"] if c["name"] == "main")


# --- item 3: the pod's env cannot act on the connector --------------------------------------

def test_item3_connector_runs_from_an_absolute_interpreter_in_isolated_mode() -> None:
    """Item 3 (webhook half): the command starts with the image's own interpreter by absolute
    path and `-I`, so a pod PATH cannot pick another `hpc-connector` and a pod PYTHONPATH
    cannot replace a module the connector imports."""
    command = connector(admitted(pod()))["command"]
    assert command[:5] == ["/opt/hpc-offload/bin/python3", "-I", "-m", "connector.cli", "run"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "python3 -m venv /opt/hpc-offload" in dockerfile  # the interpreter the image has


def test_item3_isolated_mode_ignores_a_hostile_pythonpath(tmp_path: Path) -> None:
    """Item 3: the reported attack, for real: a `json.py` on PYTHONPATH hijacked the
    connector started without `-I`; with the injected command's `-I` it is not imported."""
    (tmp_path / "json.py").write_text("raise SystemExit('hijacked by PYTHONPATH')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PATH": str(tmp_path)}
    argv = [sys.executable, "-m", "connector.cli", "--help"]
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path,
                           timeout=60)
    assert "hijacked" in plain.stderr  # the attack works without isolated mode
    isolated = subprocess.run([sys.executable, "-I", *argv[1:]], env=env, capture_output=True,
                              text=True, cwd=tmp_path, timeout=60)
    assert isolated.returncode == 0, isolated.stderr
    assert "hijacked" not in isolated.stderr and "run" in isolated.stdout


# --- item 4: no ServiceAccount token in the connector ---------------------------------------

def test_item4_connector_has_no_service_account_token() -> None:
    """Item 4: the token the ServiceAccount plugin mounted is replaced, in the connector only,
    by an empty directory, so the plugin does not mount it again; other containers keep it."""
    mutated = admitted(pod())
    mounts = {m["mountPath"]: m for m in connector(mutated)["volumeMounts"]}
    volumes = {v["name"]: v for v in mutated["spec"]["volumes"]}
    assert volumes[mounts[SA_PATH]["name"]] == {"name": mounts[SA_PATH]["name"], "emptyDir": {}}
    assert mounts[SA_PATH]["readOnly"] is True
    assert [m["mountPath"] for m in connector(mutated)["volumeMounts"]].count(SA_PATH) == 1
    sidecar = mutated["spec"]["containers"][1]
    assert sidecar["volumeMounts"] == [{"name": "kube-api-access-x1y2z", "readOnly": True,
                                        "mountPath": SA_PATH}]
    assert "kube-api-access-x1y2z" in volumes  # still there for the others
    assert "automountServiceAccountToken" not in mutated["spec"]


# --- item 7: the marker is no bypass; hpc.offload/* annotations are immutable ---------------

def hostile_premarked() -> dict[str, Any]:
    """Our own output for a good pod, then hand-edited: unlisted profile, unlimited time,
    64 nodes (the reported attack)."""
    good = admitted(pod(time="30"))
    spec = json.loads(good["metadata"]["annotations"][JOB_SPEC])
    spec["resources"].update(time_limit=0, nodes=64)
    good["metadata"]["annotations"][JOB_SPEC] = json.dumps(spec)
    good["metadata"]["annotations"]["hpc.offload/backend"] = "someone-elses"
    for volume in good["spec"]["volumes"]:
        if volume["name"] == "hpc-offload-profile":
            for source in volume["projected"]["sources"]:
                (source.get("configMap") or source.get("secret"))["name"] = "someone-elses"
    return good


def test_item7_a_premarked_pod_is_checked_against_the_policy() -> None:
    """Item 7: a hand-written pod carrying `hpc.offload/status: injected` and a hostile job
    spec was admitted unchanged; it is now checked like a new pod."""
    message = refused(hostile_premarked())
    assert 'policy rule "lab"' in message and "someone-elses" in message
    fixed = hostile_premarked()
    fixed["metadata"]["annotations"]["hpc.offload/backend"] = "site"
    for volume in fixed["spec"]["volumes"]:
        if volume["name"] == "hpc-offload-profile":
            for source in volume["projected"]["sources"]:
                (source.get("configMap") or source.get("secret"))["name"] = "site"
    assert "exceeds the maximum 01:00:00" in refused(fixed)


def test_item7_our_own_output_is_still_admitted_unchanged() -> None:
    """Item 7: reinvocation (and re-applying a mutated pod) must keep working."""
    mutated = admitted(pod(time="30"))
    response = answer(mutated)
    assert response["allowed"] and "patch" not in response


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p["metadata"]["annotations"].pop(JOB_SPEC), "hpc.offload/job-spec"),
    (lambda p: p["metadata"]["annotations"].__setitem__(JOB_SPEC, "{not json"), "job-spec"),
    (lambda p: p["metadata"]["annotations"].__setitem__(
        JOB_SPEC, json.dumps({**json.loads(p["metadata"]["annotations"][JOB_SPEC]),
                              "env": {"A": "1"}})), "env"),
    (lambda p: connector(p).__setitem__("command", ["sh", "-c", "evil"]), "command"),
    (lambda p: connector(p).__setitem__("image", "evil:1"), "image"),
    (lambda p: next(v for v in p["spec"]["volumes"] if v["name"] == "hpc-offload-podinfo")[
        "downwardAPI"]["items"][0]["fieldRef"].__setitem__(
        "fieldPath", "metadata.annotations['evil-spec']"), "hpc-offload-podinfo"),
    (lambda p: p["metadata"]["annotations"].pop("hpc.offload/backend"), "hpc.offload/backend"),
])
def test_item7_a_premarked_pod_must_be_the_webhooks_own_output(edit: Any, expected: str) -> None:
    """Item 7: what the connector reads must be what was checked: the job spec in the
    annotation, reached through our downward-API volume, run by our connector command."""
    mutated = admitted(pod(time="30"))
    edit(mutated)
    message = refused(mutated)
    assert expected in message and "hpc.offload/status" in message, message


def test_item7_premarked_without_backend_reaches_the_webhook_too() -> None:
    """Item 7: the marker alone (no backend annotation) is refused, not waved through."""
    mutated = admitted(pod(time="30"))
    del mutated["metadata"]["annotations"]["hpc.offload/backend"]
    assert "hpc.offload/backend" in refused(mutated)


@pytest.mark.parametrize("change", ["add", "change", "remove", "remove-all"])
def test_item7_updates_may_not_touch_hpc_offload_annotations(change: str) -> None:
    """Item 7: `kubectl annotate pod P hpc.offload/job-spec=…` after admission changed what a
    restarted connector reads; an UPDATE that adds, changes or removes one is refused."""
    old = admitted(pod(time="30"))
    new = json.loads(json.dumps(old))
    annotations = new["metadata"]["annotations"]
    if change == "add":
        annotations["hpc.offload/nodes"] = "64"
    elif change == "change":
        annotations[JOB_SPEC] = annotations[JOB_SPEC].replace('"time_limit":1800', '"time_limit":0')
    elif change == "remove":
        del annotations["hpc.offload/backend"]
    else:
        new["metadata"]["annotations"] = {}
    message = refused(new, "UPDATE", old)
    assert "cannot be changed after the pod is created" in message
    assert re.search(r"hpc\.offload/(nodes|job-spec|backend)", message)


def test_item7_other_updates_pass() -> None:
    """Item 7: labels, other annotations and an unannotated pod's updates are not our concern."""
    old = admitted(pod(time="30"))
    new = json.loads(json.dumps(old))
    new["metadata"]["labels"] = {"a": "b"}
    new["metadata"]["annotations"]["example.com/note"] = "x"
    assert answer(new, "UPDATE", old)["allowed"] is True
    plain = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    assert answer(plain, "UPDATE", plain)["allowed"] is True


# --- item 11: oversized values are refused before parsing, and not cached -------------------

def test_item11_oversized_values_are_refused_before_parsing() -> None:
    """Item 11: each value has a size limit checked before any parsing; the message names it."""
    message = refused(pod(script="#!/bin/sh\n" + "#" * (2 << 20)), policy=None)
    assert "hpc.offload/script" in message and "131072 bytes" in message
    message = refused(pod(sbatch_args="--exclusive " * 2000), policy=None)
    assert "hpc.offload/sbatch-args" in message and "4096 bytes" in message


def test_item11_only_small_values_are_cached() -> None:
    """Item 11: 64 distinct 100 KB scripts filled the parse cache (2 MiB ones took a worker
    from 21 to 157 MiB); only small annotation sets are cached now."""
    from webhook import annotations

    before = annotations._parse.cache_info().currsize
    for i in range(64):
        parse_annotations({"hpc.offload/backend": "b",
                           "hpc.offload/script": f"#!/bin/sh\n# {i}\n" + "x" * 100_000})
    assert annotations._parse.cache_info().currsize == before
    parse_annotations({"hpc.offload/backend": "small-one"})
    assert annotations._parse.cache_info().currsize == before + 1


# --- item 15: full matches, normalised paths, real messages, bounds, sizes -----------------

@pytest.mark.parametrize("key, value", [
    ("backend", "site\n"), ("logs", "stream\n"), ("runtime", "apptainer\n"),
    ("gpus", "2\n"), ("partition", "p\n"), ("time", "30\n"), ("logs", "end\n"),
    ("image", "docker://x\n"), ("nodes", "1\n"), ("poll-interval", "30s\n"),
    ("qos", "normal\r"), ("account", "a\x1b[2J"), ("sbatch-args", "--exclusive\x00"),
])
def test_item15_a_trailing_newline_is_refused(key: str, value: str) -> None:
    """Item 15: `$` accepted a trailing newline (`backend: "site\\n"` was admitted)."""
    message = refused(pod(**{key.replace("-", "_"): value}), policy=None)
    assert f"hpc.offload/{key}" in message


def test_item15_lists_may_span_lines() -> None:
    """Item 15: the line breaks of a list written as a YAML block separate its items."""
    mutated = admitted(pod(sbatch_args="--exclusive\n--constraint=avx2\n",
                           stage_in="/data/a:a,\n/data/b:b\n"), policy=None)
    spec = json.loads(mutated["metadata"]["annotations"][JOB_SPEC])
    assert spec["resources"]["extra_args"] == ["--exclusive", "--constraint=avx2"]
    assert [p["src"] for p in spec["stage_in"]] == ["/data/a", "/data/b"]


@pytest.mark.parametrize("path", ["/var//run/hpc-offload/state", "/var/run/./hpc-offload",
                                  "//var/run/hpc-offload/x", "/var/run/hpc-offload/../hpc-offload",
                                  "/var/run/"])
def test_item15_reserved_paths_are_normalised_before_comparing(path: str) -> None:
    """Item 15: `/var//run/hpc-offload/...` passed the string comparison."""
    p = pod()
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": path})
    message = refused(p, policy=None)
    assert "mountPath" in message and "hpc-offload" in message


@pytest.mark.parametrize("field, value, expected", [
    ("nodes", "100000000000000000000", "hpc.offload/nodes"),
    ("ntasks", "99999999999", "hpc.offload/ntasks"),
    ("gpus", "a100:99999999999", "hpc.offload/gpus"),
])
def test_item15_out_of_range_counts_get_a_real_message(field: str, value: str,
                                                        expected: str) -> None:
    """Item 15: out-of-range integers were "internal error (TypeError)"."""
    message = refused(pod(**{field: value}), policy=None)
    assert expected in message and "at most" in message


def test_item15_out_of_range_resources_get_a_real_message() -> None:
    """Item 15: a cpu request of 1e99 names the cpu request and the bound."""
    p = pod()
    p["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1e99"}}
    message = refused(p, policy=None)
    assert "cpu" in message and "1e99" in message and "at most" in message


def test_item15_poll_interval_is_bounded() -> None:
    """Item 15: a poll interval of years kept the connector from noticing the job's end."""
    message = refused(pod(poll_interval="9999h"), policy=None)
    assert "hpc.offload/poll-interval" in message and "at most 1h" in message
    admitted(pod(poll_interval="1h"), policy=None)


def test_item15_a_script_too_big_for_the_mutated_pod_is_denied_naming_the_limit() -> None:
    """Item 15: a ~150 KB script passed admission, then the API server refused the mutated pod
    (which carries it twice) with a bare "Too long"."""
    script = "#!/bin/sh\n" + "echo x\n" * 22_000  # 154 KB, as reported
    message = refused(pod(script=script), policy=None)
    assert "hpc.offload/script" in message and "at most 131072 bytes" in message
    message = refused(pod(script=script[:125_000]), policy=None)  # fits alone, not twice
    assert "262144 bytes" in message and "hpc.offload/script" in message
    admitted(pod(script=script[:100_000]), policy=None)


def test_item15_status_marker_values_stay_exact() -> None:
    """Item 15 (full matches): the marker must be exactly `injected`."""
    p = pod()
    p["metadata"]["annotations"][STATUS] = INJECTED + "\n"
    assert "hpc.offload/status" in refused(p, policy=None)
