"""Who is calling: a pod, as Kubernetes says, never as the request says.

A connector presents the projected ServiceAccount token the webhook mounted (audience
`hpc-offload-relay`, bound to its pod). The relay asks the API server once per token
(TokenReview, its only API permission) and keeps the answer until the token expires. A
token for another audience, an unbound one (no pod in it) or none at all is refused; the
refusal is logged without the token. Without Kubernetes (the load generator, tests) a static
token file stands in for the API server, as kube-apiserver's own `--token-auth-file` does.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import os
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from relay.protocol import AUDIENCE

log = logging.getLogger("hpc-offload.relay")

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"
IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CACHE_SIZE = 20000
MAX_CACHE_SECONDS = 600.0  # a review is asked again at least this often (a deleted pod)
NEGATIVE_SECONDS = 10.0  # a refused token is not reviewed again for this long


@dataclass(frozen=True)
class Identity:
    namespace: str
    pod_name: str
    pod_uid: str
    service_account: str = ""  # only the delete notices' sender is checked by it

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod_name} ({self.pod_uid})"


class Refused(Exception):
    """The token does not identify a pod for this audience: 401 (the reason is logged)."""


class Authenticator(Protocol):
    async def identify(self, token: str) -> Identity: ...


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it: only to bound the cache (the API
    server verified the token itself)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError):
        return None


class CachedAuthenticator:
    """One review per token for its lifetime (at most MAX_CACHE_SECONDS), and a short memory
    of refusals so a misconfigured pod cannot make the relay flood the API server."""

    def __init__(self, review: Authenticator) -> None:
        self._review = review
        self._cache: OrderedDict[str, tuple[Identity | None, float, str]] = OrderedDict()
        self.reviews = 0

    async def identify(self, token: str) -> Identity:
        if not token:
            raise Refused("no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(key)
            if hit[0] is None:
                raise Refused(hit[2])
            return hit[0]
        self.reviews += 1
        try:
            identity = await self._review.identify(token)
        except Refused as exc:
            self._remember(key, None, now + NEGATIVE_SECONDS, str(exc))
            raise
        expiry = token_expiry(token) or now + MAX_CACHE_SECONDS
        self._remember(key, identity, min(expiry, now + MAX_CACHE_SECONDS), "")
        return identity

    def _remember(self, key: str, identity: Identity | None, until: float, why: str) -> None:
        self._cache[key] = (identity, until, why)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


class TokenReviewer:
    """TokenReview against the API server, as the relay's own ServiceAccount."""

    def __init__(self, api: str | None = None, token_file: str | None = None, ca_file: str | None = None,
                 audience: str = AUDIENCE) -> None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if api is None and host:
            api = f"https://{'[' + host + ']' if ':' in host else host}:{port or 443}"
        if api is None:
            raise ValueError("no API server: run in a pod, or give --kube-api (or --static-tokens)")
        self.api = api.rstrip("/")
        self.token_file = Path(token_file or IN_CLUSTER / "token")
        self.audience = audience
        self.ssl = ssl.create_default_context(cafile=ca_file or str(IN_CLUSTER / "ca.crt"))
        self._session: Any = None

    async def identify(self, token: str) -> Identity:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.audience]}}
        own = self.token_file.read_text().strip()  # re-read: the kubelet rotates it
        try:
            async with self._session.post(f"{self.api}/apis/authentication.k8s.io/v1/tokenreviews",
                                          json=body, ssl=self.ssl,
                                          headers={"Authorization": f"Bearer {own}"}) as response:
                answer = await response.json(content_type=None)
                if response.status >= 300:
                    raise ReviewUnavailable(f"TokenReview answered HTTP {response.status}: "
                                            f"{str(answer.get('message', ''))[:200]}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ReviewUnavailable(f"TokenReview failed: {exc.__class__.__name__}") from None
        return identity_of(answer.get("status") or {}, self.audience)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ReviewUnavailable(Exception):
    """The API server could not be asked: 503, the connector retries (or falls back)."""


def identity_of(status: dict[str, Any], audience: str) -> Identity:
    """A pod identity from a TokenReview status, or Refused with the reason."""
    if not status.get("authenticated"):
        raise Refused(f"token not authenticated ({str(status.get('error') or 'no reason')[:120]})")
    if audience not in (status.get("audiences") or []):
        raise Refused(f"token is not for audience {audience}")
    user = status.get("user") or {}
    name = str(user.get("username", ""))
    if not name.startswith(SA_PREFIX) or name.count(":") != 3:
        raise Refused(f"{name[:120]!r} is not a ServiceAccount")
    extra = user.get("extra") or {}
    pod_name, pod_uid = (extra.get(POD_NAME) or [""])[0], (extra.get(POD_UID) or [""])[0]
    if not pod_name or not pod_uid:
        raise Refused("token is not bound to a pod (use the projected token the webhook mounts)")
    _, _, namespace, account = name.split(":")
    return Identity(namespace, pod_name, pod_uid, account)


class StaticTokens:
    """`token,namespace,pod-name,pod-uid[,audience[,serviceaccount]]` lines (a CSV file, read
    at start): the stand-in for the API server where there is no Kubernetes (load generator,
    tests)."""

    def __init__(self, path: str, audience: str = AUDIENCE) -> None:
        self.audience = audience
        self.tokens: dict[str, tuple[Identity, str]] = {}
        with open(path, newline="") as handle:
            for row in csv.reader(handle):
                if len(row) < 4 or row[0].startswith("#"):
                    continue
                for_audience = row[4] if len(row) > 4 and row[4] else audience
                account = row[5] if len(row) > 5 else "default"
                self.tokens[row[0]] = (Identity(row[1], row[2], row[3], account), for_audience)

    async def identify(self, token: str) -> Identity:
        found = self.tokens.get(token)
        if found is None:
            raise Refused("unknown token")
        if found[1] != self.audience:
            raise Refused(f"token is not for audience {self.audience}")
        return found[0]
