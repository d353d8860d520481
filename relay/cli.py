"""`hpc-offload relay`: serve the relay over TLS (docs/relay.md)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import sys
import time
from pathlib import Path

import click

CLAIM_CONTEXT = b"hpc-offload relay claims\0"


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)sZ %(name)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    for name in ("hpc-offload.relay", "hpc-connector", "hpc_offload.tls"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def _tls(cert: str, key: str) -> tuple[ssl.SSLContext, object]:
    """A server context whose certificate follows its files (a renewed Secret is served on
    the next handshake, as the webhook does: webhook.tls)."""
    from webhook.tls import ReloadingContext

    reloading = ReloadingContext(cert, key)
    base = reloading.context()

    def swap(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        current = reloading.context()
        if current is not sslobj.context:
            sslobj.context = current

    base.sni_callback = swap  # type: ignore[assignment]
    reloading.watch()
    return base, reloading


def claim_key(path: str | None, tls_key: str) -> bytes:
    """The key claims are signed with: a file of its own, else derived from the serving key
    (stable across restarts, as the Secret is; a new key only costs a tag check per job)."""
    data = Path(path or tls_key).read_bytes()
    return hashlib.sha256(CLAIM_CONTEXT + data).digest()


@click.command()
@click.option("--bind", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to listen on.")
@click.option("--cert", required=True, type=click.Path(dir_okay=False), help="Serving certificate (PEM).")
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="Its key (PEM).")
@click.option("--audience", default="hpc-offload-relay", show_default=True,
              help="The audience connectors' projected tokens must carry.")
@click.option("--static-tokens", type=click.Path(dir_okay=False, exists=True),
              help="token,namespace,pod,uid[,audience] lines instead of TokenReview (no Kubernetes: "
                   "load generator, tests).")
@click.option("--kube-api", help="API server URL for TokenReview [default: in-cluster].")
@click.option("--kube-token-file", type=click.Path(dir_okay=False), help="Token for the API server.")
@click.option("--kube-ca-file", type=click.Path(dir_okay=False), help="CA of the API server.")
@click.option("--allow-host", "allow_hosts", multiple=True,
              help="Hosts sessions may reach (glob; repeatable; also HPC_OFFLOAD_RELAY_ALLOW_HOSTS, "
                   "comma-separated) [default: any].")
@click.option("--state-dir", default="/tmp/hpc-offload-relay", show_default=True,
              help="Private directory for sessions' profiles and SSH sockets (memory-backed in a pod).")
@click.option("--claim-key-file", type=click.Path(dir_okay=False), help="Key for job claims [default: from --key].")
@click.option("--tick", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between one session's output reads.")
@click.option("--quick", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Soonest a job near its end (or cancelled) is asked again.")
@click.option("--wait", "wait_seconds", default=20.0, show_default=True, type=click.FloatRange(min=1),
              help="Longest a long poll is held.")
@click.option("--orphan-timeout", default=600.0, show_default=True, type=click.FloatRange(min=1),
              help="Cancel a job no connector asked about this long (profile `orphan_timeout` wins).")
@click.option("--trust-deletes-from", metavar="NAMESPACE:SERVICEACCOUNT",
              help="Pods of this ServiceAccount (the webhook's) may report deleted offloaded pods, "
                   "whose jobs are then cancelled at once [default: nobody].")
@click.option("--max-sessions", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--max-jobs", default=20000, show_default=True, type=click.IntRange(min=1))
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def relay(bind: str, cert: str, key: str, audience: str, static_tokens: str | None, kube_api: str | None,
          kube_token_file: str | None, kube_ca_file: str | None, allow_hosts: tuple[str, ...],
          state_dir: str, claim_key_file: str | None, tick: float, quick: float, wait_seconds: float,
          orphan_timeout: float, trust_deletes_from: str | None, max_sessions: int, max_jobs: int,
          log_level: str) -> None:
    """Serve one site session per (namespace, profile, credential) to every connector."""
    _setup_logging(log_level)
    try:
        from aiohttp import web

        from relay.auth import CachedAuthenticator, StaticTokens, TokenReviewer
        from relay.memory import lean_tls_buffers
        from relay.registry import Registry
        from relay.server import Relay, make_app
        from relay.session import Settings
    except ImportError as exc:
        raise click.ClickException(f"the relay needs {exc.name}: pip install 'hpc-offload[webhook]'") from None
    if trust_deletes_from is not None and not re.fullmatch(r"[^:\s]+:[^:\s]+", trust_deletes_from):
        raise click.BadParameter(f"{trust_deletes_from!r} is not NAMESPACE:SERVICEACCOUNT",
                                 param_hint="--trust-deletes-from")
    host, _, port = bind.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"{bind!r} is not HOST:PORT", param_hint="--bind")
    hosts = [*allow_hosts, *(h.strip() for h in os.environ.get("HPC_OFFLOAD_RELAY_ALLOW_HOSTS", "").split(",")
                             if h.strip())]
    try:
        context, reloading = _tls(cert, key)
        review = StaticTokens(static_tokens, audience) if static_tokens else TokenReviewer(
            kube_api, kube_token_file, kube_ca_file, audience)
        keyed = claim_key(claim_key_file, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    settings = Settings(tick=tick, quick=quick, orphan_timeout=orphan_timeout)
    try:
        registry = Registry(settings, state_dir, hosts, max_sessions)
    except OSError as exc:
        raise click.ClickException(f"--state-dir {state_dir}: {exc.strerror}") from None
    app = make_app(Relay(registry, CachedAuthenticator(review), keyed, wait_seconds, max_jobs,
                         ready=lambda: getattr(reloading, "info", None) is not None,
                         deletes_from=trust_deletes_from))
    logging.getLogger("hpc-offload.relay").info(
        "relay on %s (tick %.1fs, orphan timeout %.0fs, hosts: %s, identity: %s, delete notices from: %s)",
        bind, tick, orphan_timeout, ", ".join(hosts) or "any", "static tokens" if static_tokens else "TokenReview",
        trust_deletes_from or "nobody")
    lean_tls_buffers()  # ~220 KiB less a connector (relay.memory)
    web.run_app(app, host=host.strip("[]") or "0.0.0.0", port=int(port), ssl_context=context,  # noqa: S104
                print=None, access_log=None, shutdown_timeout=5)


if __name__ == "__main__":
    relay()
