"""Golden tests: tests/golden/mutation/<case>/input.yaml → output.yaml (+ job.sh).

Each case runs the `hpc-offload render` code path (the webhook's `mutate()` on every pod
template). `UPDATE_GOLDEN=1 python -m pytest tests/test_mutation_golden.py` rewrites the
expected files; review the diff before committing. Every case is also checked for
idempotency and, for each offloaded pod, through `handle_review`: the JSONPatch the webhook
answers, applied to the submitted pod, must give the golden pod.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from hpc_cli.render import dump_yaml, load_documents, render_documents, render_scripts
from webhook.admission import handle_review
from webhook.config import WebhookConfig
from webhook.manifests import TEMPLATE_PATHS
from webhook.policy import Policy, PolicyStore

GOLDEN = Path(__file__).parent / "golden" / "mutation"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())
CONFIG = WebhookConfig()


def _config(case: Path) -> WebhookConfig:
    """A case's webhook config (its config.yaml, e.g. a relay installed), else the default."""
    path = case / "config.yaml"
    return WebhookConfig.from_file(path) if path.is_file() else CONFIG


def _policy(case: Path) -> Policy | None:
    path = case / "policy.yaml"
    return Policy.load(path) if path.is_file() else None


def _render(case: Path) -> tuple[list[Any], str, str | None]:
    documents = load_documents((case / "input.yaml").read_text(), "input.yaml")
    rendered, offloaded = render_documents(documents, "default", _config(case), _policy(case))
    script = render_scripts(offloaded) if offloaded else None
    return rendered, dump_yaml(rendered), script


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual)
        return
    assert path.is_file(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{path} differs: run with UPDATE_GOLDEN=1 and review"


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = GOLDEN / name
    _, text, script = _render(case)
    _check(case / "output.yaml", text)
    if script is None:
        assert not (case / "job.sh").exists()
    else:
        _check(case / "job.sh", script)


@pytest.mark.parametrize("name", CASES)
def test_idempotent(name: str) -> None:
    case = GOLDEN / name
    rendered, text, _ = _render(case)
    again, _ = render_documents(rendered, "default", _config(case), _policy(case))
    assert again == rendered
    assert dump_yaml(again) == text


def _pods(document: Any) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, pod) for each pod template in a manifest, as the API server would see it."""
    kind = document.get("kind")
    path = TEMPLATE_PATHS.get(kind)
    if path is None:
        return []
    template: Any = document
    for key in path:
        template = template[key]
    namespace = document.get("metadata", {}).get("namespace") or "default"
    pod = {"apiVersion": "v1", "kind": "Pod", **json.loads(json.dumps(template, default=str))}
    pod.setdefault("metadata", {})["namespace"] = namespace
    return [(namespace, pod)]


@pytest.mark.parametrize("name", CASES)
def test_webhook_patch_gives_golden_pod(name: str) -> None:
    case = GOLDEN / name
    documents = load_documents((case / "input.yaml").read_text(), "input.yaml")
    rendered, _ = render_documents(documents, "default", _config(case), _policy(case))
    store = PolicyStore.of(_policy(case))
    for original, expected in zip(documents, rendered, strict=True):
        for (namespace, pod), (_, want) in zip(_pods(original), _pods(expected), strict=True):
            pod["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
            review = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "0f8c-uid",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace,
                    "operation": "CREATE",
                    "object": pod,
                },
            }
            status, body = handle_review(json.dumps(review).encode(), _config(case), store)
            assert status == 200
            response = body["response"]
            assert response["uid"] == "0f8c-uid" and response["allowed"] is True
            del pod["metadata"]["managedFields"]
            if want == pod:
                assert "patch" not in response
                continue
            patch = json.loads(base64.b64decode(response["patch"]))
            assert not any(op["path"].startswith("/metadata/managedFields") for op in patch)
            assert jsonpatch.apply_patch(pod, patch) == want


def test_every_runtime_has_a_case() -> None:
    from connector.spec import RUNTIMES

    assert {f"runtime-{r}" for r in RUNTIMES} <= set(CASES)


def test_golden_outputs_are_valid_yaml() -> None:
    for name in CASES:
        output = GOLDEN / name / "output.yaml"
        if output.is_file():
            list(yaml.safe_load_all(output.read_text()))
