"""Run the real `hpc-offload serve` on a loopback port: for tests, the bench and demos.

A subprocess of the same command an operator runs, so what is measured or tested is the
deployed configuration (gunicorn, gthread, TLS hook, multiprocess metrics), not a stand-in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from certs.generate import ensure_dir, service_names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certs(out: Path) -> Path:
    """A CA + serving certificate valid for 127.0.0.1 and localhost."""
    ensure_dir(out, service_names("hpc-offload-webhook", "hpc-offload", ("localhost",)),
               ["127.0.0.1"])
    return out


class LocalServer:
    """`python -m hpc_cli.main serve` on 127.0.0.1:<free port>, logs to a file."""

    def __init__(self, certs: Path, log: Path, *, workers: int = 2, threads: int = 4,
                 policy: Path | None = None, config: Path | None = None,
                 log_level: str = "info") -> None:
        self.certs, self.log_path = certs, log
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = str(certs / "ca.crt")
        cmd = [sys.executable, "-m", "hpc_cli.main", "serve",
               "--cert", str(certs / "tls.crt"), "--key", str(certs / "tls.key"),
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
               "--threads", str(threads), "--log-level", log_level]
        if policy is not None:
            cmd += ["--policy", str(policy)]
        if config is not None:
            cmd += ["--config", str(config)]
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=root, start_new_session=True)

    def wait_ready(self, timeout: float = 20.0) -> LocalServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                if requests.get(self.url + "/readyz", verify=self.ca, timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout}s: {self.logs()[-2000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM the master (graceful), SIGKILL its group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> LocalServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
