"""The webhook's HTTP surface (Flask): /mutate, /noop, /healthz, /readyz, /metrics.

All admission logic is `webhook.admission.handle_review`; this module only bounds the input,
times and counts the answer, and logs one JSON line per admission (identifiers only, never
the pod). No path answers 500: the API server must always get a reason it can show.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from webhook import metrics
from webhook.admission import handle_review
from webhook.tls import ReloadingContext

log = logging.getLogger("hpc_offload.request")

MAX_BODY = 7 * 1024 * 1024  # the API server's own request limit is ~3 MiB; 7 MiB as istio
NOOP_BODY = b'{"ok":true}'


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status,
                    mimetype="application/json")


def _error(status: int, reason: str) -> Response:
    return _json({"error": reason}, status)


def outcome_of(status: int, review: dict[str, Any]) -> str:
    """One of metrics.OUTCOMES, read from handle_review's answer."""
    if status != 200:
        return "bad_request"
    response = review.get("response") or {}
    if not response.get("allowed", False):
        return "denied"
    return "mutated" if response.get("patch") else "allowed_unchanged"


def _policy_status(policy_store: Any) -> tuple[bool, str]:
    """Whether the cluster policy is loaded and valid (the store reloads itself)."""
    error = getattr(policy_store, "error", None)
    if callable(error):
        error = error()
    return (error is None, str(error) if error is not None else "ok")


def _read_body() -> bytes:
    """The request body, at most MAX_BODY bytes (also for chunked bodies without a length)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestEntityTooLarge()
    body = request.stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise RequestEntityTooLarge()
    return body


def create_app(
    config: Any, policy_store: Any, tls: ReloadingContext | None = None
) -> Flask:
    """The Flask app; `tls` (when served over TLS) feeds /readyz."""
    app = Flask("hpc_offload_webhook")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.post("/mutate")
    def mutate() -> Response:
        start = time.perf_counter()
        body = _read_body()
        status, review = handle_review(body, config, policy_store)
        outcome = outcome_of(status, review)
        elapsed = time.perf_counter() - start
        metrics.observe(outcome, elapsed)
        response = review.get("response") or {}
        log.info(
            "admission",
            extra={
                "uid": response.get("uid"),
                "outcome": outcome,
                "status": status,
                "reason": (response.get("status") or {}).get("message") or review.get("error"),
                "latency_ms": round(elapsed * 1000, 3),
                "remote": request.remote_addr,
            },
        )
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
        if status == 413:
            reason = f"request body larger than {MAX_BODY} bytes"
        else:
            reason = exc.description or exc.name
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
