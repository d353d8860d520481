"""Install the webhook's certificate into the cluster: the TLS Secret and every `caBundle`.

All Kubernetes I/O is in `KubeClient` (five calls); `install()` is the decision logic over
plain dicts, so it reads the same against a real API server or a fake one.

Order matters for a rotation without failed admissions: `caBundle` is patched first and
trusts both the new and the previous CA; only then is the Secret rewritten, and replicas pick
the new files up on their next connection (webhook.tls reloads them).
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.generate import (
    CA_CERT,
    DEFAULT_DAYS,
    DEFAULT_RENEW_DAYS,
    TLS_CERT,
    TLS_KEY,
    Bundle,
    renew,
)

FIELD_MANAGER = "hpc-offload-certs"


class Kube(Protocol):
    """The few API calls `install` needs, on plain (camelCase) dicts."""

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def put_secret(self, namespace: str, body: dict[str, Any], create: bool) -> None: ...
    def get_webhook_config(self, name: str) -> dict[str, Any]: ...
    def patch_webhook_config(self, name: str, ops: list[dict[str, Any]]) -> None: ...


class KubeClient:
    """`Kube` over the official client: kubeconfig if given, else in-cluster, else default."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config  # imported here: `certs generate` needs none

        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self._client = client
        self._api = client.ApiClient()
        self._core = client.CoreV1Api(self._api)
        self._adm = client.AdmissionregistrationV1Api(self._api)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self._api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._dict(self._core.read_namespaced_secret(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def put_secret(self, namespace: str, body: dict[str, Any], create: bool) -> None:
        secret = self._client.V1Secret.from_dict(body)
        assert secret is not None
        if create:
            self._core.create_namespaced_secret(namespace, secret, field_manager=FIELD_MANAGER)
        else:
            self._core.replace_namespaced_secret(
                body["metadata"]["name"], namespace, secret, field_manager=FIELD_MANAGER
            )

    def get_webhook_config(self, name: str) -> dict[str, Any]:
        return self._dict(self._adm.read_mutating_webhook_configuration(name))

    def patch_webhook_config(self, name: str, ops: list[dict[str, Any]]) -> None:
        # A list body is sent as application/json-patch+json.
        self._adm.patch_mutating_webhook_configuration(name, ops, field_manager=FIELD_MANAGER)


@dataclass
class Result:
    """What `install` did, for the CLI to print."""

    renewed: str | None  # why a new certificate was made; None when the Secret's was kept
    secret_written: bool
    patched_webhooks: list[str] = field(default_factory=list)
    not_after: str = ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(data: dict[str, str], key: str) -> bytes | None:
    value = data.get(key)
    return base64.b64decode(value) if value else None


def _bundle_of(secret: dict[str, Any] | None) -> Bundle | None:
    data = (secret or {}).get("data") or {}
    crt, key, ca = (_unb64(data, k) for k in (TLS_CERT, TLS_KEY, CA_CERT))
    if crt is None or key is None or ca is None:
        return None
    return Bundle(ca_crt=ca, ca_key=None, tls_crt=crt, tls_key=key)


def _pem_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem) if pem.strip() else []
    except ValueError:
        return []


def ca_bundle(new_ca: bytes, previous: bytes | None) -> bytes:
    """The new CA, plus the previous one while it is still valid (rotation overlap)."""
    now = dt.datetime.now(dt.UTC)
    new = _pem_certs(new_ca)
    keep = [c for c in _pem_certs(previous or b"") if c.not_valid_after_utc > now
            and c not in new][:1]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in new + keep)


def _trusts(bundle_b64: str | None, ca_crt: bytes) -> bool:
    """Whether a caBundle already holds every certificate of `ca_crt`."""
    wanted = set(_pem_certs(ca_crt))
    have = set(_pem_certs(base64.b64decode(bundle_b64))) if bundle_b64 else set()
    return bool(wanted) and wanted <= have


def install(
    kube: Kube,
    service: str,
    namespace: str,
    secret: str,
    webhook_config: str,
    dns: list[str],
    ips: list[str],
    days: int = DEFAULT_DAYS,
    renew_days: int = DEFAULT_RENEW_DAYS,
    force: bool = False,
) -> Result:
    """Create or refresh the Secret and make every webhook of `webhook_config` trust its CA.

    Idempotent: a second run with nothing due writes nothing.
    """
    existing = kube.get_secret(namespace, secret)
    old = _bundle_of(existing)
    bundle, reason = renew(old, dns, ips, days, renew_days, force)

    mwc = kube.get_webhook_config(webhook_config)
    ops: list[dict[str, Any]] = []
    patched: list[str] = []
    for i, hook in enumerate(mwc.get("webhooks") or []):
        current = (hook.get("clientConfig") or {}).get("caBundle")
        if _trusts(current, bundle.ca_crt):
            continue
        previous = old.ca_crt if old is not None else None
        value = _b64(ca_bundle(bundle.ca_crt, previous))
        # `test` guards against the list changing between our read and our patch.
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": value})
        patched.append(hook["name"])
    if ops:
        kube.patch_webhook_config(webhook_config, ops)

    if reason is not None:
        metadata: dict[str, Any] = {
            "name": secret,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "hpc-offload"},
        }
        owner = (mwc.get("metadata") or {}).get("uid")
        if owner:  # removing the webhook configuration (kubectl delete -k, helm uninstall) removes its Secret
            metadata["ownerReferences"] = [{"apiVersion": "admissionregistration.k8s.io/v1", "uid": owner,
                                            "kind": "MutatingWebhookConfiguration", "name": webhook_config}]
        if existing is not None:  # optimistic concurrency: fail rather than clobber a race
            metadata["resourceVersion"] = existing["metadata"].get("resourceVersion")
            metadata["labels"] = {**(existing["metadata"].get("labels") or {}),
                                  **metadata["labels"]}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": metadata,
            "data": {
                TLS_CERT: _b64(bundle.tls_crt),
                TLS_KEY: _b64(bundle.tls_key),
                CA_CERT: _b64(bundle.ca_crt),
            },
        }
        kube.put_secret(namespace, body, create=existing is None)

    leaf = x509.load_pem_x509_certificate(bundle.tls_crt)
    return Result(
        renewed=reason,
        secret_written=reason is not None,
        patched_webhooks=patched,
        not_after=leaf.not_valid_after_utc.isoformat(),
    )
