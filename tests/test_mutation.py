"""The pure mutation: shape, resource mapping, errors, purity and idempotency."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.spec import JobSpec
from webhook.annotations import JOB_SPEC, PREFIX, STATUS, AdmissionDenied
from webhook.config import ConfigError, WebhookConfig, load_config
from webhook.mutation import copy_json, mutate, parse_quantity, read_job_spec

CONFIG = WebhookConfig()


def pod(annotations: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    main = {"name": "main", "image": "python:3.11", "command": ["python", "-c", "1"],
            **container}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {f"{PREFIX}backend": "cluster",
                                                  **(annotations or {})}},
        "spec": {"restartPolicy": "Never", "containers": [main]},
    }


def spec_of(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(result["metadata"]["annotations"][JOB_SPEC])


def denied(p: dict[str, Any], **kwargs: Any) -> AdmissionDenied:
    with pytest.raises(AdmissionDenied) as info:
        mutate(p, kwargs.get("namespace", "default"), kwargs.get("config", CONFIG), None)
    return info.value


def test_input_is_not_modified_and_only_what_changes_is_new() -> None:
    """Copy on write: the rewritten path is new objects; untouched subtrees are shared."""
    original = pod(env=[{"name": "A", "value": "secret"}])
    original["spec"]["securityContext"] = {"runAsUser": 1000}
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    original["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    original["spec"]["containers"].append({"name": "side", "image": "busybox"})
    original["metadata"]["annotations"][f"{PREFIX}container"] = "main"
    before = copy.deepcopy(original)
    result = mutate(original, "default", CONFIG, None)
    assert original == before
    assert result != original
    for path in ([], ["metadata"], ["metadata", "annotations"], ["spec"], ["spec", "containers"],
                 ["spec", "containers", 0], ["spec", "containers", 0, "volumeMounts"],
                 ["spec", "securityContext"], ["spec", "volumes"]):
        assert _at(result, path) is not _at(original, path), path
    assert result["spec"]["containers"][1] is original["spec"]["containers"][1]
    assert result["spec"]["containers"][0]["env"] == [{"name": "HPCO_ENV_A", "value": "secret"}]


def test_the_containers_env_is_renamed_so_no_variable_acts_on_the_connector() -> None:
    """Issue 12 item 3: `-I` does not stop the dynamic loader; a pod LD_PRELOAD (a library on a
    volume the user controls) would run inside the connector, which holds the profile's
    credentials. Every entry gets the prefix; references to earlier ones follow; `$$` stays."""
    original = pod(env=[{"name": "LD_PRELOAD", "value": "/data/evil.so"},
                        {"name": "BASE", "value": "/scratch"},
                        {"name": "OUT", "value": "$(BASE)/out $$(BASE) $(UNKNOWN)"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}])
    original["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "c"}},
                                                    {"prefix": "DB_", "secretRef": {"name": "d"}}]
    container = mutate(original, "default", CONFIG, None)["spec"]["containers"][0]
    assert [e["name"] for e in container["env"]] == ["HPCO_ENV_LD_PRELOAD", "HPCO_ENV_BASE", "HPCO_ENV_OUT",
                                                     "HPCO_ENV_TOKEN"]
    assert container["env"][2]["value"] == "$(HPCO_ENV_BASE)/out $$(BASE) $(UNKNOWN)"
    assert container["env"][3]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "t"}}
    assert [e.get("prefix") for e in container["envFrom"]] == ["HPCO_ENV_", "HPCO_ENV_DB_"]
    assert spec_of({"metadata": mutate(original, "default", CONFIG, None)["metadata"]})["env_prefix"] == "HPCO_ENV_"


def test_unannotated_and_injected_pods_come_back_as_deep_copies() -> None:
    for source in ({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}},
                   mutate(pod(), "default", CONFIG, None)):
        result = mutate(source, "default", CONFIG, None)
        assert result == source and result["spec"]["containers"][0] is not \
            source["spec"]["containers"][0]


def _at(value: Any, path: list[Any]) -> Any:
    for key in path:
        value = value[key]
    return value


def test_unannotated_pod_is_returned_unchanged() -> None:
    plain = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}
    assert mutate(plain, "default", CONFIG, None) == plain


def test_marker_makes_mutation_idempotent() -> None:
    once = mutate(pod(), "default", CONFIG, None)
    assert once["metadata"]["annotations"][STATUS] == "injected"
    assert mutate(once, "default", CONFIG, None) == once


def test_job_spec_has_no_pod_and_no_env_values() -> None:
    result = mutate(pod(env=[{"name": "TOKEN", "value": "s3cret"},
                             {"name": "TOKEN", "value": "again"},
                             {"name": "FROM", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                        envFrom=[{"secretRef": {"name": "s"}}]),
                    "default", CONFIG, None)
    text = result["metadata"]["annotations"][JOB_SPEC]
    assert "s3cret" not in text and "pod" not in json.loads(text)
    data = json.loads(text)
    assert data["env_passthrough"] == ["TOKEN", "FROM"] and data["env_from"] is True
    assert JobSpec.from_json(text) == read_job_spec(result)
    # the container keeps its env for the kubelet to resolve
    assert result["spec"]["containers"][0]["env"][0]["value"] == "s3cret"


@pytest.mark.parametrize(
    "resources, expected",
    [
        ({"requests": {"cpu": "500m"}}, {"cpus_per_task": 1}),
        ({"requests": {"cpu": "1500m"}, "limits": {"cpu": "4"}}, {"cpus_per_task": 2}),
        ({"limits": {"cpu": "2.5"}}, {"cpus_per_task": 3}),
        ({"requests": {"cpu": 3}}, {"cpus_per_task": 3}),
        ({"requests": {"memory": "1Gi"}}, {"memory_mb": 1024}),
        ({"requests": {"memory": "500M"}}, {"memory_mb": 477}),
        ({"requests": {"memory": "1e9"}}, {"memory_mb": 954}),
        ({"requests": {"memory": "1"}}, {"memory_mb": 1}),
        ({"limits": {"memory": "2Gi"}}, {"memory_mb": 2048}),
        ({"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}, {"memory_mb": 1024}),
        ({"limits": {"nvidia.com/gpu": "2"}}, {"gpus": 2}),
        ({"limits": {"amd.com/gpu": 1}}, {"gpus": 1}),
        ({"requests": {"cpu": "0"}}, {}),
    ],
)
def test_resource_mapping(resources: dict[str, Any], expected: dict[str, Any]) -> None:
    result = mutate(pod(resources=resources), "default", CONFIG, None)
    assert spec_of(result).get("resources", {}) == expected
    assert result["spec"]["containers"][0]["resources"] == dict(CONFIG.connector_resources)


def test_gpu_resource_names_are_configurable() -> None:
    config = WebhookConfig(gpu_resource_names=("example.com/tpu",))
    resources = {"limits": {"example.com/tpu": "4", "nvidia.com/gpu": "1"}}
    assert spec_of(mutate(pod(resources=resources), "d", config, None))["resources"] == {
        "gpus": 4}


def test_active_deadline_maps_to_time_unless_annotated() -> None:
    p = pod()
    p["spec"]["activeDeadlineSeconds"] = 61
    assert spec_of(mutate(p, "d", CONFIG, None))["resources"]["time_limit"] == 120
    p["metadata"]["annotations"][f"{PREFIX}time"] = "5"
    assert spec_of(mutate(p, "d", CONFIG, None))["resources"]["time_limit"] == 300


@pytest.mark.parametrize("value", ["0", "soon", True, -5])
def test_bad_active_deadline_is_denied(value: Any) -> None:
    p = pod()
    p["spec"]["activeDeadlineSeconds"] = value
    assert "spec.activeDeadlineSeconds" in denied(p).message


@pytest.mark.parametrize("quantity", ["abc", "1.2.3", "-1", "1e999", "5Zi", "", True])
def test_bad_quantity_is_denied(quantity: Any) -> None:
    message = denied(pod(resources={"requests": {"memory": quantity}})).message
    assert message.startswith('container "main": memory:')


def test_fractional_gpu_is_denied() -> None:
    message = denied(pod(resources={"limits": {"nvidia.com/gpu": "500m"}})).message
    assert "whole number of devices" in message


def test_parse_quantity() -> None:
    assert parse_quantity("100m", "x") * 10 == 1
    assert parse_quantity("1Ki", "x") == 1024
    assert parse_quantity("1.5G", "x") == 1_500_000_000
    assert parse_quantity(2, "x") == 2 and parse_quantity(" 2 ", "x") == 2  # the cache sees text


@pytest.mark.parametrize("value", [{"a": 1}, ["1"], True, None, "-1", "1e999", "x" * 100])
def test_parse_quantity_refuses_what_is_no_quantity(value: Any) -> None:
    """Unhashable and boolean values too: the cache must not turn them into a TypeError or 1."""
    with pytest.raises(AdmissionDenied) as info:
        parse_quantity(value, "container \"main\": cpu")
    assert info.value.message.startswith('container "main": cpu: ')


def test_copy_json_is_deep_and_makes_yaml_types_json() -> None:
    """The render path feeds YAML: its dates and integer keys come back as JSON (and kubectl)
    has them; integers beyond 64 bits, which orjson refuses, are copied exactly."""
    source = {"a": [{"b": 1}], "when": datetime.date(2024, 1, 2), 7: "seven", "t": ("x",)}
    copied = copy_json(source)
    assert copied == {"a": [{"b": 1}], "when": "2024-01-02", "7": "seven", "t": ["x"]}
    copied["a"][0]["b"] = 2
    assert source["a"][0]["b"] == 1
    huge = {"n": [2**70]}
    assert copy_json(huge) == huge and copy_json(huge)["n"] is not huge["n"]


def test_several_containers_need_the_container_annotation() -> None:
    p = pod()
    p["spec"]["containers"].append({"name": "side", "image": "x"})
    assert denied(p).message == (
        "hpc.offload/container: missing; the pod has 2 containers (main, side): name the one "
        "to offload")
    p["metadata"]["annotations"][f"{PREFIX}container"] = "nope"
    assert denied(p).message == (
        'hpc.offload/container: "nope" is not a container of this pod; use one of main, side')
    p["spec"]["initContainers"] = [{"name": "init", "image": "x"}]
    p["metadata"]["annotations"][f"{PREFIX}container"] = "init"
    assert "is an init container" in denied(p).message
    p["metadata"]["annotations"][f"{PREFIX}container"] = "side"
    result = mutate(p, "d", CONFIG, None)
    assert result["spec"]["containers"][0] == p["spec"]["containers"][0]
    assert result["spec"]["containers"][1]["image"] == CONFIG.connector_image
    assert result["spec"]["initContainers"] == p["spec"]["initContainers"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda p: p["spec"].pop("containers"), "spec.containers: the pod has no containers"),
        (lambda p: p.pop("spec"), "spec: the pod has no spec"),
        (lambda p: p["spec"]["containers"][0].pop("name"), "every container needs a name"),
        (lambda p: p["spec"]["containers"][0].update(command="python"),
         'container "main": command must be a list of strings'),
        (lambda p: p["spec"]["containers"][0].update(env=[{"name": "a.b", "value": "1"}]),
         "container \"main\": env: 'a.b' is not a valid environment variable name"),
        (lambda p: p["spec"]["containers"][0].update(image="-oops"),
         'container "main": image "-oops" is not an image name'),
        (lambda p: p["spec"].update(volumes=[{"name": "hpc-offload-state", "emptyDir": {}}]),
         'spec.volumes: the name "hpc-offload-state" is reserved'),
        (lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[{"name": "v", "mountPath": "/var/run"}]),
         'mountPath "/var/run" overlaps /var/run/hpc-offload'),
        (lambda p: p.update(metadata=[]), "metadata: must be an object"),
        (lambda p: p["spec"]["containers"][0].update(resources={"requests": "lots"}),
         "resources.requests must be an object"),
    ],
)
def test_bad_pods_are_denied(change: Any, expected: str) -> None:
    p = pod()
    change(p)
    assert expected in denied(p).message


def test_runtime_none_needs_a_command() -> None:
    p = pod({f"{PREFIX}runtime": "none"})
    del p["spec"]["containers"][0]["command"]
    assert "command: required with runtime 'none'" in denied(p).message


def test_stage_paths_must_be_on_volumes() -> None:
    mounts = [{"name": "in", "mountPath": "/in", "readOnly": True},
              {"name": "out", "mountPath": "/out/"}]
    ok = pod({f"{PREFIX}stage-in": "/in/a:a", f"{PREFIX}stage-out": "/out:o"},
             volumeMounts=mounts)
    mutate(ok, "d", CONFIG, None)
    outside = pod({f"{PREFIX}stage-in": "/etc/passwd:p"}, volumeMounts=mounts)
    assert denied(outside).message.startswith(
        'hpc.offload/stage-in: the pod path "/etc/passwd" is not inside a volumeMount')
    readonly = pod({f"{PREFIX}stage-out": "/in/r:r"}, volumeMounts=mounts)
    assert "is on a readOnly volumeMount" in denied(readonly).message
    prefix_trick = pod({f"{PREFIX}stage-in": "/inside:x"}, volumeMounts=mounts)
    assert "not inside a volumeMount" in denied(prefix_trick).message


def test_grace_period_and_fs_group() -> None:
    p = pod()
    assert mutate(p, "d", CONFIG, None)["spec"]["terminationGracePeriodSeconds"] == 60
    p["spec"]["terminationGracePeriodSeconds"] = 300
    p["spec"]["securityContext"] = {"fsGroup": 5}
    result = mutate(p, "d", CONFIG, None)
    assert result["spec"]["terminationGracePeriodSeconds"] == 300
    assert result["spec"]["securityContext"] == {"fsGroup": 5}
    p["spec"]["terminationGracePeriodSeconds"] = 0
    config = WebhookConfig(min_grace_seconds=10, fs_group=4242)
    p["spec"]["securityContext"] = {"runAsUser": 1}
    result = mutate(p, "d", config, None)
    assert result["spec"]["terminationGracePeriodSeconds"] == 30
    assert result["spec"]["securityContext"] == {"runAsUser": 1, "fsGroup": 4242}


def test_connector_container_follows_the_contract() -> None:
    p = pod(args=["x"], workingDir="/w", stdin=True, tty=True, stdinOnce=True,
            livenessProbe={}, readinessProbe={}, startupProbe={},
            lifecycle={"postStart": {"exec": {"command": ["x"]}}},
            securityContext={"privileged": True}, ports=[{"containerPort": 1}])
    config = WebhookConfig(connector_image="reg/c:2", image_pull_policy="Always",
                           run_as_user=500, run_as_group=501)
    c = mutate(p, "d", config, None)["spec"]["containers"][0]
    for key in ("args", "workingDir", "stdin", "tty", "stdinOnce", "livenessProbe", "startupProbe"):
        assert key not in c
    # the pod's own probe is gone; ours says whether the HPC job runs (issue 14 item 2)
    assert c["readinessProbe"]["tcpSocket"] == {"port": 8471}
    assert c["command"][-2:] == ["--ready-port", "8471"]
    no_probe = mutate(p, "d", WebhookConfig(ready_port=0), None)["spec"]["containers"][0]
    assert "readinessProbe" not in no_probe and "--ready-port" not in no_probe["command"]
    assert c["image"] == "reg/c:2" and c["imagePullPolicy"] == "Always"
    assert c["command"][:5] == ["/opt/hpc-offload/bin/python3", "-I", "-m", "connector.cli",
                                "run"]
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["/bin/sh", "-c", "kill -INT 1"]}}}
    assert c["securityContext"]["runAsUser"] == 500 and "privileged" not in c["securityContext"]
    assert c["ports"] == [{"containerPort": 1}]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_unknown_fields_survive() -> None:
    p = pod()
    p["spec"]["initContainers"] = [{"name": "s", "image": "x", "restartPolicy": "Always"}]
    p["spec"]["futureField"] = {"a": [1, 2]}
    p["spec"]["containers"][0]["futureContainerField"] = True
    result = mutate(p, "d", CONFIG, None)
    assert result["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert result["spec"]["futureField"] == {"a": [1, 2]}
    assert result["spec"]["containers"][0]["futureContainerField"] is True
    assert result["spec"]["restartPolicy"] == "Never"


def test_generate_name_pod() -> None:
    p = pod()
    del p["metadata"]["name"]
    p["metadata"]["generateName"] = "run-"
    result = mutate(p, "d", CONFIG, None)
    assert "name" not in result["metadata"] and result["metadata"]["generateName"] == "run-"


# --- config ---------------------------------------------------------------------------------

def test_config_from_file_and_env(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("connectorImage: reg/hpc:1\nminGraceSeconds: 90\n"
                    "gpu_resource_names: [a.com/gpu]\n"
                    "connectorResources: {requests: {cpu: 5m}}\n")
    config = load_config(path, environ={"HPC_OFFLOAD_IMAGE_PULL_POLICY": "Always",
                                        "HPC_OFFLOAD_GPU_RESOURCE_NAMES": "x.io/gpu, y.io/gpu",
                                        "HPC_OFFLOAD_POLICY_FILE": "/etc/p.yaml"})
    assert config.connector_image == "reg/hpc:1" and config.min_grace_seconds == 90
    assert config.image_pull_policy == "Always" and config.policy_file == "/etc/p.yaml"
    assert config.gpu_resource_names == ("x.io/gpu", "y.io/gpu")
    assert config.connector_resources == {"requests": {"cpu": "5m"}}
    assert load_config(None, environ={}) == WebhookConfig()
    path.write_text('{"run_as_user": 1234}')
    assert load_config(path, environ={}).run_as_user == 1234


@pytest.mark.parametrize(
    "data",
    [{"image_pull_policy": "Sometimes"}, {"run_as_user": 0}, {"min_grace_seconds": -1},
     {"connector_resources": {"requests": {"cpu": "lots"}}}, {"bogus": 1},
     {"gpu_resource_names": "nvidia.com/gpu"}, {"connector_image": "a b"}],
)
def test_bad_config_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        WebhookConfig.from_mapping(data)


def test_bad_env_config_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_config(None, environ={"HPC_OFFLOAD_MIN_GRACE_SECONDS": "soon"})


# --- properties -----------------------------------------------------------------------------

_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(
    ["1", "0", "2", "a100:2", "30s", "stream", "podman", "none", "/d:x", "01:00:00",
     "--exclusive", "#!/bin/bash\ntrue\n", "main", "UNLIMITED"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["container", "runtime", "image", "partition", "time",
                                        "nodes", "gpus", "sbatch-args", "script", "logs",
                                        "poll-interval", "stage-in", "stage-out", "qos"]),
                       _VALUES, max_size=5),
       st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]),
                       st.one_of(st.text(max_size=8), st.integers(-3, 10**6)), max_size=3))
def test_random_annotations_mutate_or_deny_and_are_idempotent(
    annotations: dict[str, str], requests: dict[str, Any]
) -> None:
    p = pod({PREFIX + k: v for k, v in annotations.items()}, resources={"requests": requests},
            volumeMounts=[{"name": "d", "mountPath": "/d"}])
    before = copy.deepcopy(p)
    try:
        once = mutate(p, "default", CONFIG, None)
    except AdmissionDenied as exc:
        assert exc.code == 400 and exc.message
        return
    finally:
        assert p == before, "mutate() changed its input"
    assert mutate(once, "default", CONFIG, None) == once
    spec = read_job_spec(once)
    assert spec is not None and spec.container == "main"
