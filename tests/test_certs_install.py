"""`hpc-offload certs install` against a fake API server over HTTP.

No API server runs in unit tests (the e2e suite has the real one), so a small fake speaks the
five REST calls; the real `kubernetes` client, its serialisation and our CLI all run.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonpatch
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs.cli import certs
from certs.generate import make_bundle, service_names

SECRETS = "/api/v1/namespaces/hpc-offload/secrets"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/hpc-offload"


class FakeAPI:
    """Secrets in one namespace and one MutatingWebhookConfiguration, with resourceVersions."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {MWC: {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "hpc-offload", "resourceVersion": "1"},
            "webhooks": [
                {"name": f"{n}.hpc.offload", "admissionReviewVersions": ["v1"],
                 "sideEffects": "None",
                 "clientConfig": {"service": {"name": "hpc-offload-webhook",
                                              "namespace": "hpc-offload", "path": "/mutate"}}}
                for n in ("pods", "jobs")
            ],
        }}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 1
        self.kubeconfig = ""  # set by the fixture
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "code": code})

            def _body(self):
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_GET(self):
                obj = api.objects.get(self.path.split("?")[0])
                self._send(200, obj) if obj else self._status(404, "NotFound")

            def do_POST(self):
                body = self._body()
                path = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
                if path in api.objects:
                    return self._status(409, "AlreadyExists")
                api.store(path, body, "POST", self.headers["Content-Type"])
                self._send(201, api.objects[path])

            def do_PUT(self):
                path, body = self.path.split("?")[0], self._body()
                current = api.objects.get(path)
                if current is None:
                    return self._status(404, "NotFound")
                if body["metadata"].get("resourceVersion") != current["metadata"][
                        "resourceVersion"]:
                    return self._status(409, "Conflict")
                api.store(path, body, "PUT", self.headers["Content-Type"])
                self._send(200, api.objects[path])

            def do_PATCH(self):
                path, ops = self.path.split("?")[0], self._body()
                if self.headers["Content-Type"] != "application/json-patch+json":
                    return self._status(415, "UnsupportedMediaType")
                try:
                    patched = jsonpatch.apply_patch(api.objects[path], ops)
                except jsonpatch.JsonPatchException:
                    return self._status(422, "Invalid")
                api.store(path, patched, "PATCH", self.headers["Content-Type"])
                self._send(200, patched)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def store(self, path: str, obj: dict, verb: str, content_type: str) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[path] = obj
        self.writes.append((verb, path, content_type))

    def secret(self) -> dict[str, bytes]:
        data = self.objects[f"{SECRETS}/webhook-tls"]["data"]
        return {k: base64.b64decode(v) for k, v in data.items()}

    def ca_bundles(self) -> list[bytes]:
        return [base64.b64decode(w["clientConfig"]["caBundle"])
                for w in self.objects[MWC]["webhooks"]]


@pytest.fixture
def api(tmp_path):
    fake = FakeAPI()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": f"http://127.0.0.1:{fake.server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    fake.kubeconfig = str(kubeconfig)
    yield fake
    fake.server.shutdown()


def install(api: FakeAPI, *extra: str) -> str:
    args = ["install", "--service", "hpc-offload-webhook", "--namespace", "hpc-offload",
            "--secret", "webhook-tls", "--webhook-config", "hpc-offload",
            "--kubeconfig", api.kubeconfig, *extra]
    result = CliRunner().invoke(certs, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def verifies(ca_bundle: bytes, tls_crt: bytes) -> bool:
    store = Store(x509.load_pem_x509_certificates(ca_bundle))
    verifier = PolicyBuilder().store(store).build_server_verifier(
        x509.DNSName("hpc-offload-webhook.hpc-offload.svc"))
    try:
        verifier.verify(x509.load_pem_x509_certificate(tls_crt), [])
    except x509.verification.VerificationError:
        return False
    return True


def test_install_creates_the_secret_and_patches_every_webhook(api):
    install(api)
    secret = api.objects[f"{SECRETS}/webhook-tls"]
    assert secret["type"] == "kubernetes.io/tls"
    data = api.secret()
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}  # the CA key never leaves the job
    bundles = api.ca_bundles()
    assert len(bundles) == 2 and all(b == data["ca.crt"] for b in bundles)
    assert verifies(bundles[0], data["tls.crt"])
    assert [w[0] for w in api.writes] == ["PATCH", "POST"]  # caBundle first, then the Secret
    assert api.writes[0][2] == "application/json-patch+json"

    # Idempotent: a second run reads and writes nothing.
    assert "kept" in install(api)
    assert len(api.writes) == 2


def test_install_renews_near_expiry_and_trusts_both_cas_during_rotation(api):
    install(api, "--days", "20", "--renew-days", "10")
    old = api.secret()
    assert "kept" in install(api, "--days", "20", "--renew-days", "10")

    out = install(api, "--days", "20", "--renew-days", "30")
    assert "renewed" in out
    new = api.secret()
    assert new["tls.crt"] != old["tls.crt"]
    for bundle in api.ca_bundles():
        assert verifies(bundle, new["tls.crt"])  # replicas that reloaded
        assert verifies(bundle, old["tls.crt"])  # replicas that have not yet
    secret_writes = [w for w in api.writes if w[1].startswith(SECRETS)]
    assert [w[0] for w in secret_writes] == ["POST", "PUT"]


def test_install_fixes_a_caBundle_that_does_not_match(api):
    install(api)
    api.objects[MWC]["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(
        make_bundle(service_names("x", "y"), []).ca_crt).decode()
    assert "jobs.hpc.offload" in install(api)
    assert all(verifies(b, api.secret()["tls.crt"]) for b in api.ca_bundles())


def test_install_replaces_a_secret_with_wrong_names(api):
    bundle = make_bundle(["other.example.org"], [])
    api.objects[f"{SECRETS}/webhook-tls"] = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "webhook-tls", "namespace": "hpc-offload", "resourceVersion": "7",
                     "labels": {"team": "platform"}},
        "data": {k: base64.b64encode(v).decode() for k, v in
                 (("tls.crt", bundle.tls_crt), ("tls.key", bundle.tls_key),
                  ("ca.crt", bundle.ca_crt))},
    }
    assert "missing SANs" in install(api)
    secret = api.objects[f"{SECRETS}/webhook-tls"]
    assert secret["metadata"]["labels"]["team"] == "platform"
    leaf = x509.load_pem_x509_certificate(api.secret()["tls.crt"])
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
