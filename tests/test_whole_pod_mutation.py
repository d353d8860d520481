"""The webhook's side of whole pods (`hpc.offload/container: "*"`): what is denied, naming the
field; the shape of the mutated pod (one connector per container, the leader, env prefixes,
private volume mounts); a marked pod coming back (reinvocation) admitted unchanged, a forged
one refused; the policy held for every container."""

from __future__ import annotations

import copy

import pytest

from connector.spec import JobSpec
from webhook.annotations import AdmissionDenied
from webhook.config import WebhookConfig
from webhook.mutation import mutate, read_job_spec
from webhook.policy import Policy

CONFIG = WebhookConfig()


def pod(**spec_changes) -> dict:
    base = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"hpc.offload/backend": "testbed",
                                                  "hpc.offload/container": "*",
                                                  "hpc.offload/runtime": "none"}},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]},
                               {"name": "shipper", "image": "busybox", "command": ["sleep", "inf"],
                                "restartPolicy": "Always"}],
            "containers": [
                {"name": "a", "image": "python:3.11", "command": ["echo", "$(GREETING)"],
                 "env": [{"name": "GREETING", "value": "hi"}, {"name": "BOTH", "value": "$(GREETING)!"}],
                 "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}},
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                  {"name": "conf", "mountPath": "/etc/conf", "readOnly": True},
                                  {"name": "kube-api-access-x", "mountPath":
                                   "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}]},
                {"name": "b", "image": "python:3.11", "command": ["cat", "/shared/x"],
                 "envFrom": [{"configMapRef": {"name": "settings"}}],
                 "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
            ],
            "volumes": [{"name": "shared", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "conf"}},
                        {"name": "kube-api-access-x", "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token"}}]}}],
        },
    }
    base["spec"].update(spec_changes)
    return base


def containers(mutated: dict) -> dict[str, dict]:
    spec = mutated["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_every_container_becomes_a_connector_of_the_same_name_and_the_first_init_leads():
    mutated = mutate(pod(), "ns", CONFIG, None)
    by_name = containers(mutated)
    assert list(by_name) == ["init", "shipper", "a", "b"]
    for name, container in by_name.items():
        assert container["image"] == CONFIG.connector_image
        assert container["command"][container["command"].index("--part") + 1] == name
    assert [n for n, c in by_name.items() if "--leader" in c["command"]] == ["init"]
    # a regular init container may have no lifecycle and no probes; a native sidecar may
    assert "lifecycle" not in by_name["init"] and "readinessProbe" not in by_name["init"]
    assert "--ready-port" not in by_name["init"]["command"]
    assert by_name["shipper"]["restartPolicy"] == "Always" and "lifecycle" in by_name["shipper"]
    ports = [c["readinessProbe"]["tcpSocket"]["port"] for c in by_name.values() if "readinessProbe" in c]
    assert len(set(ports)) == len(ports) == 3  # one port each: the containers share the pod's network
    job = read_job_spec(mutated)
    assert job is not None and job.leader == "init"
    assert [(p.name, p.kind) for p in job.parts] == [("init", "init"), ("shipper", "sidecar"), ("a", "app"),
                                                     ("b", "app")]


def test_the_leader_holds_every_containers_env_under_its_own_prefix_and_the_file_volumes():
    by_name = containers(mutate(pod(), "ns", CONFIG, None))
    leader = by_name["init"]
    assert leader["env"] == [{"name": "HPCO_ENV_2_GREETING", "value": "hi"},
                             {"name": "HPCO_ENV_2_BOTH", "value": "$(HPCO_ENV_2_GREETING)!"}]
    assert leader["envFrom"] == [{"configMapRef": {"name": "settings"}, "prefix": "HPCO_ENV_3_"}]
    assert {"name": "conf", "mountPath": "/var/run/hpc-offload/volumes/conf", "readOnly": True} \
        in leader["volumeMounts"]
    for name in ("shipper", "a", "b"):  # the others submit nothing, so they hold nothing
        assert "envFrom" not in by_name[name] and not by_name[name].get("env")
        assert not any(m["name"] in ("conf", "shared") for m in by_name[name]["volumeMounts"])


def test_the_job_spec_carries_parts_volumes_and_the_pods_effective_requests():
    job = read_job_spec(mutate(pod(), "ns", CONFIG, None))
    assert job is not None
    a = job.part("a")
    assert a.command == ("echo", "$(GREETING)") and a.env_passthrough == ("GREETING", "BOTH")
    assert [(m.volume, m.path, m.read_only) for m in a.mounts] == [("shared", "/shared", False),
                                                                   ("conf", "/etc/conf", True)]
    assert job.part("b").env_from
    assert [(v.name, v.kind) for v in job.volumes] == [("shared", "emptyDir"), ("conf", "files")]
    assert job.resources.cpus_per_task == 3 and job.resources.memory_mb == 1536  # 1.5 + 1 cores, rounded up


def test_without_init_containers_the_first_app_container_leads():
    spec = pod()
    del spec["spec"]["initContainers"]
    by_name = containers(mutate(spec, "ns", CONFIG, None))
    assert [n for n, c in by_name.items() if "--leader" in c["command"]] == ["a"]


@pytest.mark.parametrize(("change", "field", "why"), [
    ({"hostNetwork": True}, "spec.hostNetwork", "HPC node"),
    ({"restartPolicy": "OnFailure"}, "spec.restartPolicy", "use Never"),
    ({"volumes": [{"name": "shared", "hostPath": {"path": "/data"}}]}, "spec.volumes[0] (\"shared\").hostPath",
     "cluster node's files"),
    ({"volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "c"}}]}, "spec.volumes[0]",
     "hpc.offload/stage-in"),
    ({"volumes": [{"name": "shared", "nfs": {"server": "x", "path": "/"}}]}, "spec.volumes[0]", "nfs volumes"),
])
def test_what_cannot_follow_the_pod_is_denied_naming_the_field(change, field, why):
    with pytest.raises(AdmissionDenied) as denied:
        mutate(pod(**change), "ns", CONFIG, None)
    assert denied.value.message.startswith(field) and why in denied.value.message


def test_ports_and_stdin_are_denied_naming_the_container():
    with_port = pod()
    with_port["spec"]["containers"][1]["ports"] = [{"containerPort": 8080}]
    with pytest.raises(AdmissionDenied, match=r"^spec\.containers\[1\]\.ports: containerPort 8080: .*routes to"):
        mutate(with_port, "ns", CONFIG, None)
    with_stdin = pod()
    with_stdin["spec"]["initContainers"][0]["stdin"] = True
    with pytest.raises(AdmissionDenied, match=r"^spec\.initContainers\[0\]\.stdin: "):
        mutate(with_stdin, "ns", CONFIG, None)


@pytest.mark.parametrize(("key", "value"), [("hpc.offload/script", "#!/bin/bash\ntrue\n"),
                                            ("hpc.offload/stage-in", "/data/x:x"),
                                            ("hpc.offload/ntasks", "4")])
def test_single_container_annotations_are_denied_with_a_whole_pod(key, value):
    spec = pod()
    spec["metadata"]["annotations"][key] = value
    with pytest.raises(AdmissionDenied, match=f"^{key}: "):
        mutate(spec, "ns", CONFIG, None)


def test_a_mount_path_a_bind_flag_cannot_carry_is_denied():
    spec = pod()
    spec["spec"]["containers"][1]["volumeMounts"][0]["mountPath"] = "/data:x"
    with pytest.raises(AdmissionDenied, match=r"containers\[1\]\.volumeMounts\[0\]\.mountPath"):
        mutate(spec, "ns", CONFIG, None)


def test_a_mutated_whole_pod_comes_back_unchanged_and_a_forged_one_is_refused():
    mutated = mutate(pod(), "ns", CONFIG, None)
    assert mutate(mutated, "ns", CONFIG, None) == mutated  # reinvocation
    forged = copy.deepcopy(mutated)
    forged["spec"]["containers"][0]["command"] = ["sh", "-c", "cat /var/run/hpc-offload/profile/*"]
    with pytest.raises(AdmissionDenied, match="does not run the connector's command"):
        mutate(forged, "ns", CONFIG, None)
    extra = copy.deepcopy(mutated)
    extra["spec"]["containers"].append({"name": "sneaky", "image": "busybox"})
    with pytest.raises(AdmissionDenied, match="not the parts"):
        mutate(extra, "ns", CONFIG, None)


def test_the_policy_holds_for_every_container(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - name: images\n    namespaces: ['*']\n    images: ['docker://python:']\n")
    spec = pod()
    spec["metadata"]["annotations"]["hpc.offload/runtime"] = "apptainer"
    with pytest.raises(AdmissionDenied) as denied:
        mutate(spec, "ns", CONFIG, Policy.load(path))
    assert "busybox" in denied.value.message and denied.value.code == 403


def test_the_job_spec_round_trips_and_a_part_reads_as_one_container():
    job = read_job_spec(mutate(pod(), "ns", CONFIG, None))
    assert job is not None
    assert JobSpec.from_json(job.to_json()) == job
    single = job.part_spec("a")
    assert single.command == ("echo", "$(GREETING)") and single.env_prefix == "HPCO_ENV_2_"
    assert not single.parts and single.container == "a"
