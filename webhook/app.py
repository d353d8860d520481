"""The webhook's HTTP surface (Flask): /mutate, /deleted, /noop, /healthz, /readyz, /metrics.

All admission logic is `webhook.admission.handle_review`; this module only bounds the input,
times and counts the answer, and logs one JSON line per admission (identifiers only, never
the pod). No path answers 500: the API server must always get a reason it can show.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from webhook import metrics
from webhook.admission import handle_review
from webhook.deletion import handle_delete_review
from webhook.tls import ReloadingContext

log = logging.getLogger("hpc_offload.request")

MAX_BODY = 7 * 1024 * 1024  # the API server's own request limit is ~3 MiB; 7 MiB as istio
DRAIN_LIMIT = 4 * MAX_BODY  # beyond this, close without reading on
NOOP_BODY = b'{"ok":true}'


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status,
                    mimetype="application/json")


def _error(status: int, reason: str) -> Response:
    return _json({"error": reason}, status)


def _policy_status(policy_store: Any) -> tuple[bool, str]:
    """Whether a valid policy is in force. A broken new file does not make us unready: the
    store keeps the last good policy, and pulling every replica out of the Service over an
    admin's typo would block all offloaded pods."""
    policy = policy_store.get()
    if policy_store.path is not None and policy is None:
        return False, f"not loaded: {policy_store.last_error}"
    state = "none configured" if policy is None else f"{len(policy.rules)} rule(s) from " \
        f"{policy_store.path}"
    if policy_store.last_error:
        state += f"; last reload failed, keeping the last good policy: {policy_store.last_error}"
    return True, state


def _read_body() -> bytes:
    """The request body, at most MAX_BODY bytes (also for chunked bodies without a length).

    An oversized body is read to its end (up to DRAIN_LIMIT) before the 413, because a client
    still sending when we close gets a TLS EOF instead of our reason.
    """
    length = request.content_length
    if length is not None and length > DRAIN_LIMIT:
        raise RequestEntityTooLarge()
    body = request.stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        drained = len(body)
        while drained < DRAIN_LIMIT and (chunk := request.stream.read(1 << 20)):
            drained += len(chunk)
        raise RequestEntityTooLarge()
    return body


def _notifier(config: Any) -> Any:
    """The relay's delete notices, when the config gives the webhook a token for it."""
    if not config.relay_token_file or not config.relay_url:
        return None
    from connector.backends.relay import RelayClient
    from webhook.relay_notice import DeleteNotifier

    return DeleteNotifier(RelayClient(config.relay_url, config.relay_ca, None, config.relay_token_file))


def create_app(
    config: Any, policy_store: Any, tls: ReloadingContext | None = None
) -> Flask:
    """The Flask app; `tls` (when served over TLS) feeds /readyz."""
    app = Flask("hpc_offload_webhook")
    notifier = _notifier(config)

    @app.post("/mutate")
    def mutate() -> Response:
        start = time.perf_counter()
        body = _read_body()
        result = handle_review(body, config, policy_store)
        status, review = result
        elapsed = time.perf_counter() - start
        metrics.observe(result.outcome, elapsed)
        log.info(
            "admission",
            extra={
                "uid": (review.get("response") or {}).get("uid"),
                "outcome": result.outcome,
                "status": status,
                "reason": result.reason,
                "latency_ms": round(elapsed * 1000, 3),
                "remote": request.remote_addr,
            },
        )
        return _json(review, status)

    @app.post("/deleted")
    def deleted() -> Response:
        """DELETE of an offloaded pod: allowed, and told to the relay (webhook.deletion)."""
        (status, review), pod = handle_delete_review(_read_body())
        if pod is not None and notifier is not None:
            notifier.notify(pod)
        notified = pod is not None and notifier is not None
        log.info("admission", extra={"uid": (review.get("response") or {}).get("uid"), "operation": "DELETE",
                                     "outcome": "relay_notified" if notified else "allowed_unchanged",
                                     "status": status, "remote": request.remote_addr})
        return _json(review, status)

    @app.post("/noop")
    def noop() -> Response:
        """Same transport work as /mutate (read the body, answer JSON): the bench baseline."""
        _read_body()
        return Response(NOOP_BODY, mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks: dict[str, str] = {}
        ok = True
        if tls is not None:
            loaded = tls.refresh()
            ok &= loaded
            info = tls.info
            checks["certificate"] = (
                f"serial {info.serial}, valid until {info.not_after}"
                if loaded and info else f"not loaded: {tls.error}"
            )
            if tls.error:
                checks["certificate"] += f" (last reload failed: {tls.error})"
        policy_ok, reason = _policy_status(policy_store)
        ok &= policy_ok
        checks["policy"] = reason
        return _json({"status": "ok" if ok else "not ready", "checks": checks},
                     200 if ok else 503)

    @app.get("/metrics")
    def metrics_view() -> Response:
        data, content_type = metrics.render()
        return Response(data, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        too_big = f"request body larger than {MAX_BODY} bytes"
        reason = too_big if status == 413 else (exc.description or exc.name)
        if request.path == "/mutate":
            metrics.observe("bad_request", None)
            log.info("admission", extra={"outcome": "bad_request", "status": status,
                                         "reason": reason, "remote": request.remote_addr})
        return _error(status, reason)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Never a 500: the API server shows our reason to the user instead of a bare failure.
        log.exception("unexpected error on %s", request.path,
                      extra={"path": request.path, "status": 400})
        return _error(400, f"internal error: {exc.__class__.__name__}")

    return app
