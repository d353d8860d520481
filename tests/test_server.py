"""The real server: `hpc-offload serve` (gunicorn, 2 gthread workers, TLS) on loopback.

Every test talks HTTPS to the subprocess, as the API server would.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonpatch
import pytest
import requests
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from certs.generate import CA_CERT, CA_KEY, make_bundle, sans_of, write_dir
from webhook.localserver import LocalServer, make_certs
from webhook.tls import WATCH_INTERVAL

POLICY_ALLOW = """
rules:
  - name: research
    namespaces: [research]
    profiles: [prometheus]
    maxTime: "2-00:00:00"
"""
POLICY_DENY = POLICY_ALLOW.replace("profiles: [prometheus]", "profiles: [other-cluster]")


def job_pod(annotated: bool = True) -> dict:
    """A Job's pod as the API server sends it at CREATE: no uid, generateName, managedFields."""
    annotations = {"hpc.offload/backend": "prometheus", "hpc.offload/partition": "plgrid",
                   "hpc.offload/time": "01:30:00"} if annotated else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "train-",
            "namespace": "research",
            "labels": {"batch.kubernetes.io/job-name": "train", "job-name": "train"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                                 "uid": "0d6f3c8e-1b1e-4f7a-9f55-1c2d3e4f5a6b",
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "train",
                "image": "ghcr.io/example/train:1.4",
                "command": ["python", "train.py"],
                "args": ["--epochs", "10"],
                "env": [{"name": "EPOCHS", "value": "10"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t",
                                                                         "key": "token"}}}],
                "resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                              "limits": {"memory": "8Gi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "workingDir": "/work",
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def review(pod: dict, namespace: str = "research") -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:job-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY_ALLOW)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, policy_file):
    root = tmp_path_factory.mktemp("server")
    certs = make_certs(root / "certs")
    with LocalServer(certs, root / "server.log", workers=2, policy=policy_file) as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.logs()[-3000:]
    assert "Traceback" not in srv.logs(), srv.logs()


def post(server: LocalServer, body: dict | bytes, path: str = "/mutate",
         session: requests.Session | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (session or requests).post(server.url + path, data=data, verify=server.ca,
                                      headers={"Content-Type": "application/json"}, timeout=10)


def served_serial(port: int) -> int:
    """The serial of the certificate a fresh TLS connection is shown."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def admissions(server: LocalServer) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", verify=server.ca, timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "hpc_offload_admissions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["outcome"]] = sample.value
    return out


def test_annotated_pod_is_mutated_with_a_patch_that_applies(server):
    pod = job_pod()
    req = review(pod)
    resp = post(server, req)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == req["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    container = patched["spec"]["containers"][0]
    assert container["name"] == "train"
    assert container["image"] != "ghcr.io/example/train:1.4"
    assert container["command"][1:5] == ["-I", "-m", "connector.cli", "run"]
    assert patched["metadata"]["annotations"]["hpc.offload/status"] == "injected"
    spec = json.loads(patched["metadata"]["annotations"]["hpc.offload/job-spec"])
    assert "ghcr.io/example/train:1.4" in json.dumps(spec)


def test_unannotated_pod_is_allowed_without_patch(server):
    req = review(job_pod(annotated=False))
    resp = post(server, req)
    assert resp.status_code == 200, resp.text
    response = resp.json()["response"]
    assert response["allowed"] is True
    assert response["uid"] == req["request"]["uid"]
    assert "patch" not in response


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"request": 5}', b"[]", b""])
def test_malformed_review_is_400_with_a_reason(server, body):
    resp = post(server, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()  # a JSON reason, never an HTML error page


def test_oversized_body_is_refused_with_a_reason(server):
    big = b'{"pad": "' + b"x" * (7 * 1024 * 1024 + 10) + b'"}'
    resp = post(server, big)
    assert resp.status_code in (400, 413)
    assert "larger than" in resp.json()["error"]

    def chunks():  # no Content-Length: the cap must hold while reading
        for _ in range(8):
            yield b"x" * (1024 * 1024)

    resp = requests.post(server.url + "/mutate", data=chunks(), verify=server.ca, timeout=10)
    assert resp.status_code in (400, 413)


def test_probes_and_noop(server):
    assert requests.get(server.url + "/healthz", verify=server.ca, timeout=5).json() == {
        "status": "ok"}
    ready = requests.get(server.url + "/readyz", verify=server.ca, timeout=5)
    assert ready.status_code == 200
    assert "serial" in ready.json()["checks"]["certificate"]
    noop = post(server, review(job_pod()), path="/noop")
    assert noop.status_code == 200 and noop.json() == {"ok": True}


def admission_pids(server: LocalServer) -> set[int]:
    return {json.loads(line)["pid"] for line in server.logs().splitlines()
            if line.startswith("{") and '"msg":"admission"' in line}


def test_metrics_are_summed_across_two_workers(server):
    before = admissions(server)

    def one(_: int) -> int:  # a new connection each: the kernel spreads them over workers
        return post(server, review(job_pod(annotated=False))).status_code

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Which worker accepts is the kernel's choice: send until both have answered.
        while sent < 400 and (sent == 0 or len(admission_pids(server)) < 2):
            assert set(pool.map(one, range(40))) == {200}
            sent += 40
    assert len(admission_pids(server)) == 2, "both workers should have answered admissions"
    post(server, b"garbage")
    for _ in range(4):  # whichever worker answers the scrape, it reports everyone's counts
        after = admissions(server)
        assert after["allowed_unchanged"] - before.get("allowed_unchanged", 0) == sent
        assert after["bad_request"] - before.get("bad_request", 0) == 1


def test_request_log_is_json_with_uid_and_no_pod_content(server):
    req = review(job_pod())
    assert post(server, req).status_code == 200
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.logs().splitlines()
             if req["request"]["uid"] in line]
    assert len(lines) == 1
    assert lines[0]["outcome"] == "mutated" and lines[0]["latency_ms"] > 0
    assert "ghcr.io/example/train" not in server.logs()
    assert "EPOCHS" not in server.logs()


def test_certificate_rotation_is_picked_up_without_restart(server):
    certs = server.certs
    old_serial = served_serial(server.port)
    keep_alive = requests.Session()
    assert post(server, review(job_pod()), session=keep_alive).status_code == 200

    dns, ips = sans_of((certs / "tls.crt").read_bytes())
    ca = ((certs / CA_CERT).read_bytes(), (certs / CA_KEY).read_bytes())
    new = make_bundle(dns, ips, days=30, ca=ca)
    write_dir(certs, new)
    new_serial = x509.load_pem_x509_certificate(new.tls_crt).serial_number
    assert new_serial != old_serial
    # Every new connection, whichever worker takes it, is shown the new certificate.
    assert {served_serial(server.port) for _ in range(8)} == {new_serial}
    assert post(server, review(job_pod())).status_code == 200  # still verifies
    # A connection opened before the rotation keeps working.
    assert post(server, review(job_pod()), session=keep_alive).status_code == 200
    # every worker has the new certificate now, even one that took no connection meanwhile
    time.sleep(2 * WATCH_INTERVAL + 0.5)

    # A broken file is not served: the last good certificate stays until a good one lands.
    (certs / "tls.crt").write_text("not a certificate")
    assert served_serial(server.port) == new_serial
    ready = requests.get(server.url + "/readyz", verify=server.ca, timeout=5).json()
    assert "last reload failed" in ready["checks"]["certificate"]
    write_dir(certs, new)
    assert served_serial(server.port) == new_serial


def test_policy_file_is_reloaded(server, policy_file):
    assert post(server, review(job_pod())).json()["response"]["allowed"] is True
    policy_file.write_text(POLICY_DENY)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answers = [post(server, review(job_pod())).json()["response"] for _ in range(4)]
            if all(not a["allowed"] for a in answers):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"new policy not in force: {answers}")
        assert "research" in answers[0]["status"]["message"]
        assert admissions(server)["denied"] >= 4
    finally:
        policy_file.write_text(POLICY_ALLOW)


def test_files_written_per_request_are_in_memory(server):
    """gunicorn's heartbeat and the metric files are touched on every request: on this host's
    disk-backed /tmp they stalled requests, so serve keeps them in /dev/shm."""
    from hpc_cli.serve import memory_dir

    if memory_dir() is None:
        pytest.skip("no writable /dev/shm here")
    post(server, review(job_pod()))  # a worker has written its metric file by now
    workers = [int(pid) for pid in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
               .read_text().split()]
    assert len(workers) == 2
    heartbeats, metric_files = [], []
    for pid in workers:
        targets = [str(link.readlink()) for link in Path(f"/proc/{pid}/fd").iterdir()
                   if link.is_symlink()]
        heartbeats += [t for t in targets if "wgunicorn" in t]
        metric_files += [line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text()
                         .splitlines() if line.endswith(".db")]
    assert heartbeats and all(t.startswith("/dev/shm/") for t in heartbeats), heartbeats
    assert metric_files and all(t.startswith("/dev/shm/") for t in metric_files), metric_files
