"""The delete admission on plain AdmissionReview dicts (webhook.deletion), the config that
switches the notices on, and a relay that does not answer (the delete is never held up)."""

from __future__ import annotations

import logging
import socket
import time

import orjson
import pytest

from webhook.app import create_app
from webhook.config import ConfigError, WebhookConfig
from webhook.deletion import DeletedPod, handle_delete_review
from webhook.policy import PolicyStore


def review(operation: str = "DELETE", annotations: dict | None = None, **request) -> bytes:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                        "annotations": {"hpc.offload/backend": "slurm"} if annotations is None else annotations}}
    body = {"uid": "r-1", "operation": operation, "namespace": "ns", "oldObject": pod, "object": None,
            "resource": {"group": "", "version": "v1", "resource": "pods"}, **request}
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body})


def test_an_offloaded_pods_delete_is_allowed_and_names_the_pod():
    (status, answer), pod = handle_delete_review(review())
    assert status == 200 and answer["response"] == {"uid": "r-1", "allowed": True}
    assert pod == DeletedPod("ns", "p", "u-1")


@pytest.mark.parametrize("body", [
    review(dryRun=True),                                  # a dry run has no side effects
    review(annotations={}),                               # not offloaded
    review(annotations={"hpc.offload/status": "x"}),      # only the backend key marks it
    review(operation="CREATE"),
    review(subResource="eviction"),
])
def test_other_requests_are_allowed_and_name_no_pod(body):
    (status, answer), pod = handle_delete_review(body)
    assert status == 200 and answer["response"]["allowed"] is True and pod is None


def test_a_malformed_review_is_a_bad_request_without_a_pod():
    (status, answer), pod = handle_delete_review(b"{not json")
    assert status == 400 and "not JSON" in answer["error"] and pod is None


def test_the_token_file_needs_the_relay_and_an_absolute_path():
    with pytest.raises(ConfigError, match="relay_token_file"):
        WebhookConfig(relay_token_file="/t")
    with pytest.raises(ConfigError, match="relay_token_file"):
        WebhookConfig(relay_url="https://relay:443", relay_token_file="token")
    assert WebhookConfig(relay_url="https://relay:443", relay_token_file="/t").relay_token_file == "/t"


def test_a_relay_that_is_down_costs_a_log_line_not_the_delete(tmp_path, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("secret-token-value\n")
    config = WebhookConfig(relay_url=f"https://127.0.0.1:{port}", relay_token_file=str(token))
    client = create_app(config, PolicyStore(None)).test_client()
    caplog.set_level(logging.INFO)
    answer = client.post("/deleted", data=review()).get_json()
    assert answer["response"]["allowed"] is True
    deadline = time.monotonic() + 15
    while "not told to the relay" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert "secret-token-value" not in caplog.text
