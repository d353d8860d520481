"""The Flask app in-process: the error paths a real server cannot be made to hit on demand."""

from __future__ import annotations

import pytest

from webhook import app as app_module
from webhook.app import MAX_BODY, create_app
from webhook.config import WebhookConfig
from webhook.policy import PolicyStore


@pytest.fixture
def client():
    return create_app(WebhookConfig(), PolicyStore(None)).test_client()


def test_a_crash_in_admission_is_a_400_with_a_reason_not_a_500(client, monkeypatch):
    def boom(*_args):
        raise RuntimeError("bug")

    monkeypatch.setattr(app_module, "handle_review", boom)
    resp = client.post("/mutate", data=b"{}")
    assert resp.status_code == 400
    assert "RuntimeError" in resp.get_json()["error"]


@pytest.mark.parametrize("path,method", [("/nope", "get"), ("/mutate", "get"),
                                         ("/healthz", "post")])
def test_routing_errors_are_json(client, path, method):
    resp = getattr(client, method)(path)
    assert resp.status_code in (404, 405)
    assert resp.is_json and resp.get_json()["error"]


def test_body_cap(client):
    resp = client.post("/mutate", data=b"x" * (MAX_BODY + 1))
    assert resp.status_code == 413
    assert str(MAX_BODY) in resp.get_json()["error"]


def test_readyz_reports_a_broken_policy_reload_but_stays_ready(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: [{name: all, namespaces: ['*']}]\n")
    store = PolicyStore(policy, interval=0)
    client = create_app(WebhookConfig(), store).test_client()
    assert client.get("/readyz").status_code == 200
    policy.write_text("rules: {broken")
    resp = client.get("/readyz")
    assert resp.status_code == 200  # the last good policy is in force
    assert "last reload failed" in resp.get_json()["checks"]["policy"]
