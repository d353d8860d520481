"""`hpc-offload serve`: the webhook over TLS, in gunicorn (programmatic, no config file).

gthread workers keep the API server's connections alive, and read each request whole before a
thread takes it, within a time limit (webhook.worker: slow clients cannot hold the threads);
the serving certificate is re-read when its files change (webhook.tls); metrics are summed
across workers (webhook.metrics).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client at import time
SHM = Path("/dev/shm")


def memory_dir() -> str | None:
    """A RAM-backed directory for files written on every request (gunicorn's worker heartbeat,
    the per-worker metric files), or None for the system default. On a disk-backed /tmp those
    writes reach the block layer: gunicorn's docs warn of stalls, and here they cost the
    webhook ~10 % of its throughput. (The Deployment mounts /tmp from memory anyway.)"""
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK) else None


def prepare_metrics_dir(metrics_dir: Path | None) -> tuple[Path, bool]:
    """Point prometheus_client at an empty directory; returns (dir, we made it).

    Runs before anything imports prometheus_client. Stale files from an earlier run would be
    summed into this one's counters, so a given directory is emptied of them.
    """
    if metrics_dir is None:
        path, ours = Path(tempfile.mkdtemp(prefix="hpc-offload-metrics-", dir=memory_dir())), True
    else:
        path, ours = metrics_dir, False
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path, ours


def _gunicorn_app(options: dict[str, Any], config_path: str | None,
                  policy_path: str | None, tls: Any) -> Any:
    from gunicorn.app.base import BaseApplication

    class WebhookServer(BaseApplication):  # type: ignore[misc]
        """gunicorn driven from Python; the app is built in each worker after fork, so the
        policy store's reload machinery lives in the process that uses it."""

        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # settings newer than gunicorn 22 are optional
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from webhook.app import create_app

            config, store = _load_parts(config_path, policy_path)
            tls.watch()  # in each worker: threads do not survive the fork
            return create_app(config, store, tls)

    return WebhookServer()


def _load_parts(config_path: str | None, policy_path: str | None) -> tuple[Any, Any]:
    """The webhook config and the policy store (--policy wins over the config's file)."""
    from webhook.config import load_config
    from webhook.policy import PolicyStore

    config = load_config(config_path)
    return config, PolicyStore(policy_path or config.policy_file)


def _child_exit(_server: Any, worker: Any) -> None:
    from webhook.metrics import mark_dead

    mark_dead(worker.pid)


@click.command()
@click.option("--cert", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Serving certificate (PEM); re-read when it changes.")
@click.option("--key", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Its private key (PEM); re-read when it changes.")
@click.option("--bind", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Threads per worker (gthread).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Webhook config file (default: $HPC_OFFLOAD_CONFIG, else built-in).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False),
              help="Cluster policy file, reloaded on change (default: the config's).")
@click.option("--metrics-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for per-worker metric files (default: a temporary one).")
@click.option("--read-timeout", type=click.FloatRange(min=0.1, max=300), default=5.0,
              show_default=True,
              help="Seconds a client has to send a whole request (headers and body); then the "
                   "connection is closed. The API server's own limit is the webhook's "
                   "timeoutSeconds.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def serve(cert: str, key: str, bind: str, workers: int, threads: int,
          config_path: str | None, policy_path: str | None, metrics_dir: Path | None,
          read_timeout: float, log_level: str) -> None:
    """Serve the admission webhook over TLS (gunicorn)."""
    metrics_path, ours = prepare_metrics_dir(metrics_dir)
    master = os.getpid()
    try:
        from webhook.logging_setup import configure, logconfig_dict
        from webhook.tls import ReloadingContext
        from webhook.worker import BufferedThreadWorker

        configure(log_level)
        # Fail here, with a readable message, rather than in every worker at boot.
        tls = ReloadingContext(cert, key)
        if not tls.refresh():
            raise click.ClickException(f"cannot load {cert} / {key}: {tls.error}")
        try:
            _load_parts(config_path, policy_path)
        except ValueError as exc:  # ConfigError and policy errors are ValueErrors
            raise click.ClickException(str(exc)) from exc
        options = {
            "bind": [bind],
            "workers": workers,
            "threads": threads,
            "worker_class": BufferedThreadWorker,
            "certfile": cert,
            "keyfile": key,
            "ssl_context": tls.gunicorn_hook(),
            "child_exit": _child_exit,
            "worker_tmp_dir": memory_dir(),
            "keepalive": 75,  # the API server reuses connections; its idle timeout is 90 s
            "timeout": 30,
            "graceful_timeout": 10,
            "accesslog": None,  # the app writes one JSON line per admission
            "logconfig_dict": logconfig_dict(log_level),
            "loglevel": log_level,
            "proc_name": "hpc-offload-webhook",
            # gunicorn >= 24 opens $HOME/.gunicorn/gunicorn.ctl: one per user, so a second
            # server (replica, test, bench) would take it over. Not needed here.
            "control_socket_disable": True,
        }
        BufferedThreadWorker.read_timeout = read_timeout  # the workers are forked from here
        _gunicorn_app(options, config_path, policy_path, tls).run()
    finally:
        if ours and os.getpid() == master:  # forked workers unwind through here too
            shutil.rmtree(metrics_path, ignore_errors=True)
