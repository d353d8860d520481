"""A relay on this machine without Kubernetes: its own CA and serving certificate, static
tokens for the pods it will see, and the real `hpc-offload relay` process. The test suite, the
load generator and bench/scale.py use it; a site never needs it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from relay.auth import Identity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RelayProcess:
    """`hpc-offload relay` on 127.0.0.1 with static tokens; `start()`, `kill()`, `start()` again
    is a relay restart (same port, same key: its claims stay valid unless `new_claim_key`)."""

    directory: Path
    port: int = field(default_factory=free_port)
    args: list[str] = field(default_factory=list)
    tokens: dict[str, Identity] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.certs = self.directory / "certs"
        if not (self.certs / "tls.crt").exists():
            from certs.generate import ensure_dir

            ensure_dir(self.certs, ["localhost"], ["127.0.0.1"], 30, 1, False)
        self.claim_key = self.directory / "claim.key"
        self.claim_key.write_bytes(secrets.token_bytes(32))
        self.log_path = self.directory / "relay.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    def token_for(self, namespace: str, pod: str, uid: str, audience: str = "",
                  account: str = "default") -> Path:
        """A token file for this pod (written before `start`, as the relay reads them once)."""
        token = secrets.token_urlsafe(24)
        self.tokens[token] = Identity(namespace, pod, uid, account)
        path = self.directory / "tokens" / f"{uid}{'-' + audience if audience else ''}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(token + "\n")
        with open(self.directory / "tokens.csv", "a") as handle:
            handle.write(f"{token},{namespace},{pod},{uid},{audience},{account}\n")
        return path

    def env(self, token_file: Path) -> dict[str, str]:
        """What the webhook gives a connector: the relay's URL and CA, the token's path."""
        return {"HPC_OFFLOAD_RELAY_URL": self.url, "HPC_OFFLOAD_RELAY_CA_FILE": str(self.ca_file),
                "HPC_OFFLOAD_RELAY_TOKEN_FILE": str(token_file)}

    def start(self, timeout: float = 20.0) -> None:
        tokens = self.directory / "tokens.csv"
        tokens.touch()
        argv = [sys.executable, "-m", "relay.cli", "--bind", f"127.0.0.1:{self.port}",
                "--cert", str(self.certs / "tls.crt"), "--key", str(self.certs / "tls.key"),
                "--static-tokens", str(tokens), "--state-dir", str(self.directory / "state"),
                "--claim-key-file", str(self.claim_key), *self.args]
        sink = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(argv, stdout=sink, stderr=sink, cwd=Path(__file__).resolve().parent.parent,
                                     start_new_session=True)
        sink.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the relay exited {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(OSError):
                if self.get("/healthz") == "ok\n":
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the relay did not answer in {timeout:.0f}s:\n{self.log}")

    def get(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(self.url + path, context=context, timeout=5) as response:  # noqa: S310
            return response.read().decode()

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                values[name] = float(value)
        return values

    def kill(self) -> None:
        """SIGKILL, as a node loss or an OOM kill would end it; its ssh processes go too (in a
        pod they die with the container; here `ssh -f` masters left its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._kill_leftovers()
        self.restarts += 1

    def _kill_leftovers(self) -> None:
        marker = str(self.directory / "state").encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._kill_leftovers()

    def new_claim_key(self) -> None:
        """As if the relay's key changed: claims no longer verify; jobs are checked by tag."""
        self.claim_key.write_bytes(secrets.token_bytes(32))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
