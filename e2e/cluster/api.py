"""Minimal admin calls to the API server (requests + the admin client cert).

The cluster code uses this instead of the `kubernetes` client so `up`/`down`/`status` work
with the core dependencies only.
"""

from __future__ import annotations

from typing import Any

import requests

from e2e.cluster.config import NODE_NAME, Paths
from e2e.cluster.controlplane import API_SERVER


def _tls(paths: Paths) -> dict[str, Any]:
    # per request, not on a Session: REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override Session.verify
    return {
        "cert": (str(paths.pki / "admin-client.crt"), str(paths.pki / "admin-client.key")),
        "verify": str(paths.pki / "ca.crt"),
    }


def get(paths: Paths, path: str, timeout: float = 3) -> Any:
    r = requests.get(f"{API_SERVER}{path}", timeout=timeout, **_tls(paths))
    r.raise_for_status()
    return r.json()


def delete(paths: Paths, path: str, params: dict[str, str] | None = None) -> int:
    r = requests.delete(f"{API_SERVER}{path}", params=params, timeout=5, **_tls(paths))
    return r.status_code


def node_ready(paths: Paths, node: str = NODE_NAME) -> bool:
    conditions = get(paths, f"/api/v1/nodes/{node}")["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def default_service_account(paths: Paths) -> bool:
    get(paths, "/api/v1/namespaces/default/serviceaccounts/default")
    return True
