"""Delete notices (issue 11, delete -> jobs gone): the webhook's `/deleted` admission path,
through its real Flask app and notifier, tells a real relay process that an offloaded pod was
deleted; the relay cancels the pod's job on the testbed's SLURM before anyone signals the
connector. Only the webhook's ServiceAccount may say so.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from connector.backends.relay import RelayClient
from connector.errors import BackendError, ConnectorError
from relay.local import RelayProcess
from relay.protocol import b64, profile_files
from tests.contract.targets import _slurm_in_queue, _slurm_jobs_tagged
from tests.test_relay import bash, profile_with
from webhook.app import create_app
from webhook.config import WebhookConfig
from webhook.policy import PolicyStore

pytestmark = [pytest.mark.slurm]
NAMESPACE = "tests"  # run_connector's pods live here
WEBHOOK = ("hpc-offload", "hpc-offload-webhook")


@pytest.fixture(scope="module")
def relay(tmp_path_factory, testbed_info):
    server = RelayProcess(tmp_path_factory.mktemp("relay-deletes"),
                          args=["--trust-deletes-from", ":".join(WEBHOOK)])
    server.pods = []
    for _ in range(5):
        uid = str(uuid.uuid4())
        server.pods.append((uid, server.token_for(NAMESPACE, "t", uid)))
    server.webhook_token = server.token_for(WEBHOOK[0], "hpc-offload-webhook-x", str(uuid.uuid4()),
                                            account=WEBHOOK[1])
    server.stranger_token = server.token_for(WEBHOOK[0], "other-x", str(uuid.uuid4()), account="default")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def required(profiles, tmp_path):
    return profile_with(profiles["slurm-ssh-openssh"], tmp_path / "relay-required", relay="required")


def delete_review(uid: str, namespace: str = NAMESPACE, dry_run: bool = False) -> bytes:
    pod = {"metadata": {"name": "t", "namespace": namespace, "uid": uid,
                        "annotations": {"hpc.offload/backend": "slurm"}}}
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "operation": "DELETE", "namespace": namespace, "dryRun": dry_run,
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "oldObject": pod, "object": None}})


def webhook_client(relay: RelayProcess):
    config = WebhookConfig(relay_url=relay.url, relay_ca=relay.ca_file.read_text(),
                           relay_token_file=str(relay.webhook_token))
    return create_app(config, PolicyStore(None)).test_client()


def test_a_deleted_pods_job_is_cancelled_by_the_webhooks_notice(relay, required, run_connector):
    (uid, token), (other_uid, other_token) = relay.pods.pop(), relay.pods.pop()
    run = run_connector(bash("echo started; sleep 300"), required, env=relay.env(token), uid=uid)
    kept = run_connector(bash("echo started; sleep 300"), required, env=relay.env(other_token), uid=other_uid)
    run.wait_for_stderr("submitted HPC job", timeout=120)
    kept.wait_for_stderr("submitted HPC job", timeout=120)
    webhook = webhook_client(relay)

    answer = webhook.post("/deleted", data=delete_review(uid, dry_run=True)).get_json()
    assert answer["response"]["allowed"] is True
    time.sleep(3)  # a dry run is told to nobody: the job still runs
    assert _slurm_in_queue(run.job_id) and "deleted pods" not in relay.log

    answer = webhook.post("/deleted", data=delete_review(uid)).get_json()
    assert answer["response"]["allowed"] is True
    deadline = time.monotonic() + 30
    while _slurm_in_queue(run.job_id):  # nobody signalled the connector: the relay cancelled it
        assert time.monotonic() < deadline, relay.log
        time.sleep(0.2)
    assert f"cancelling 1 job(s): {run.job_id}" in relay.log
    assert run.wait(60) != 0 and "CANCELLED" in run.log
    assert _slurm_in_queue(kept.job_id), "another pod's job is untouched"


def test_only_the_webhooks_account_may_report_deletes(relay, required, run_connector):
    uid, token = relay.pods.pop()
    run = run_connector(bash("echo started; sleep 300"), required, env=relay.env(token), uid=uid)
    run.wait_for_stderr("submitted HPC job", timeout=120)
    body = {"pods": [{"namespace": NAMESPACE, "uid": uid}]}
    for caller in (token, relay.stranger_token):  # the pod itself; another account of the namespace
        client = RelayClient(relay.url, None, str(relay.ca_file), str(caller))
        with pytest.raises(BackendError, match="only the webhook"):
            client.post("/v1/deleted", body)
    webhook = RelayClient(relay.url, None, str(relay.ca_file), str(relay.webhook_token))
    with pytest.raises(ConnectorError, match="HTTP 400: pods: a list of at most 1000"):
        webhook.post("/v1/deleted", {"pods": [{"namespace": NAMESPACE, "uid": uid}] * 1001})
    with pytest.raises(ConnectorError, match="HTTP 400: each pod needs its namespace and uid"):
        webhook.post("/v1/deleted", {"pods": [{"uid": uid}]})
    time.sleep(3)
    assert _slurm_in_queue(run.job_id)
    assert "only the webhook's ServiceAccount" in relay.log
    assert relay.webhook_token.read_text().strip() not in relay.log


def hang_up_after_sending(client: RelayClient, path: str, body: dict[str, object]) -> None:
    """The connector sends its request and is gone before any answer (a connector killed, a
    timeout shorter than the submission): no timing to win, unlike a short client timeout, which
    an sbatch answered within it (CI) did not trip."""
    conn = client._connection(60)  # noqa: SLF001 - the client's own TLS and token, no read
    conn.request("POST", client.prefix + path, orjson.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {client._token()}"})  # noqa: SLF001
    client.close()


def test_a_job_submitted_after_its_connector_left_is_still_cancelled_on_delete(relay, required):
    """The connector's submit timed out (a burst, a kill) while the relay was still submitting:
    the job the relay then submitted is followed all the same, so the pod's delete ends it."""
    uid, token = relay.pods.pop()
    client = RelayClient(relay.url, None, str(relay.ca_file), str(token))
    files = {name: b64(data) for name, data in profile_files(required).items()}
    sid = client.post("/v1/session", {"name": required.name, "files": files})["session"]
    workdir = client.post(f"/v1/session/{sid}/workdir", {})["workdir"]
    spec = {"command": ["bash", "-c", "echo started; sleep 300"], "runtime": "none",
            "pod": {"namespace": NAMESPACE, "name": "t", "uid": uid}}
    request = {"spec": spec, "job_dir": f"{workdir}/hpco-{uid}", "env": {}, "run": 0}
    hang_up_after_sending(client, f"/v1/session/{sid}/submit", {"request": request})
    deadline = time.monotonic() + 60
    while not (jobs := _slurm_jobs_tagged(f"hpco-{uid}")):
        assert time.monotonic() < deadline, relay.log
        time.sleep(0.5)
    assert _slurm_in_queue(jobs[0])

    answer = webhook_client(relay).post("/deleted", data=delete_review(uid)).get_json()
    assert answer["response"]["allowed"] is True
    deadline = time.monotonic() + 30
    while _slurm_in_queue(jobs[0]):
        assert time.monotonic() < deadline, f"job {jobs[0]} outlived its pod:\n{relay.log}"
        time.sleep(0.2)
    assert f"cancelling 1 job(s): {jobs[0]}" in relay.log
