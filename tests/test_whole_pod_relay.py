"""Whole pods through the relay (issue 15 with issue 11): a real `hpc-offload relay` and one
real `hpc-connector run` per container. The relay follows each container's part of the one
job on its own (its output, its exit marker), so every container's log and code stay its own;
the leader copies ConfigMap/Secret volumes over the direct path (the relay copies no files)."""

from __future__ import annotations

import signal
import uuid

import pytest

from relay.local import RelayProcess
from tests.contract.targets import _slurm_in_queue, _slurm_jobs_tagged
from tests.test_relay import children, profile_with
from tests.test_whole_pod import Pod, launch_pod, sh, stop_pods

pytestmark = [pytest.mark.slurm]


@pytest.fixture(scope="module")
def relay(tmp_path_factory, testbed_info):
    server = RelayProcess(tmp_path_factory.mktemp("relay-whole-pod"))
    server.pool = []  # type: ignore[attr-defined]
    for _ in range(8):  # tokens exist before the relay reads them
        uid = str(uuid.uuid4())
        server.pool.append((uid, server.token_for("tests", "whole", uid)))  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relay_pod(relay, profiles, tmp_path):
    started: list[Pod] = []

    def launch(spec: dict, mode: str, **options) -> Pod:
        profile = profile_with(profiles["slurm-ssh-openssh"], tmp_path / f"profile-{uuid.uuid4().hex[:6]}",
                               relay=mode)
        uid, token = relay.pool.pop()
        return launch_pod(tmp_path, profile, spec, uid=uid, every_env=relay.env(token), started=started,
                          **options)

    yield launch
    stop_pods(started)


def test_each_container_follows_its_own_part_through_the_relay(relay_pod, relay):
    spec = {"runtime": "none", "volumes": [{"name": "shared", "kind": "emptyDir"}], "parts": [
        {"name": "prepare", "kind": "init", "command": sh("echo ready > $HPCO_VOLUME_SHARED/flag; echo prepared"),
         "mounts": [{"volume": "shared", "path": "/shared"}]},
        {"name": "ok", "command": sh("cat $HPCO_VOLUME_SHARED/flag; for i in 1 2 3; do echo ok $i; sleep 1; done"),
         "mounts": [{"volume": "shared", "path": "/shared"}]},
        {"name": "bad", "command": sh("echo bad out; echo bad err >&2; sleep 2; exit 5")},
    ]}
    pod = relay_pod(spec, "required")
    assert pod.wait() == {"prepare": 0, "ok": 0, "bad": 5}, pod.log() + relay.log
    assert pod.out("prepare") == "prepared\n"
    assert pod.out("ok") == "ready\nok 1\nok 2\nok 3\n"
    assert pod.out("bad") == "bad out\n" and "bad err\n" in pod.runs["bad"].stderr_lines
    for run in pod.runs.values():
        assert "through the relay" in run.log
    assert _slurm_jobs_tagged(f"hpco-{pod.uid}") == [pod.runs["prepare"].job_id]


def test_the_leader_copies_volumes_directly_and_follows_through_the_relay(relay_pod, relay):
    spec = {"runtime": "none", "volumes": [{"name": "config", "kind": "files"}], "parts": [
        {"name": "app", "command": sh("cat $HPCO_VOLUME_CONFIG/settings.ini"),
         "mounts": [{"volume": "config", "path": "/etc/app"}]},
        {"name": "peer", "command": sh("cat $HPCO_VOLUME_CONFIG/settings.ini"),
         "mounts": [{"volume": "config", "path": "/etc/app"}]},
    ]}
    pod = relay_pod(spec, "preferred", volumes={"config": {"settings.ini": "level = 3\n"}})
    assert pod.wait() == {"app": 0, "peer": 0}, pod.log() + relay.log
    assert pod.out("app") == pod.out("peer") == "level = 3\n"
    assert all("through the relay" in run.log for run in pod.runs.values())


def test_relay_required_and_volumes_to_copy_end_clearly_before_anything_is_submitted(relay_pod):
    spec = {"runtime": "none", "volumes": [{"name": "config", "kind": "files"}], "parts": [
        {"name": "app", "command": sh("true"), "mounts": [{"volume": "config", "path": "/etc/app"}]},
        {"name": "peer", "command": sh("true")},
    ]}
    pod = relay_pod(spec, "required", volumes={"config": {"a": "b\n"}})
    codes = pod.wait(timeout=90)
    assert codes == {"app": 78, "peer": 78}, pod.log()
    assert "use relay: preferred" in pod.runs["app"].log
    assert _slurm_jobs_tagged(f"hpco-{pod.uid}") == []


def test_deleting_the_pod_cancels_its_job_through_the_relay(relay_pod):
    spec = {"runtime": "none", "parts": [{"name": "a", "command": sh("echo a; sleep 300")},
                                         {"name": "b", "command": sh("echo b; sleep 300")}]}
    pod = relay_pod(spec, "required")
    for run in pod.runs.values():
        run.wait_for_stderr("running", timeout=90)
    job_id = pod.runs["a"].job_id
    assert _slurm_in_queue(job_id)
    assert [c for run in pod.runs.values() for c in children(run.proc.pid)] == []  # no ssh of their own
    for run in pod.runs.values():
        run.proc.send_signal(signal.SIGTERM)
    assert pod.wait(timeout=90) == {"a": 143, "b": 143}, pod.log()
    assert not _slurm_in_queue(job_id)
