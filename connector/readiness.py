"""Readiness = "the HPC job is running": a TCP port the connector listens on only then.

The kubelet's TCP probe is the cheapest probe there is (a connect, no process on the node,
unlike an exec probe), so `kubectl get pods` shows `0/1 Running` while the job waits in the
queue and `1/1` while it runs, with no privilege and no API call. Connections are accepted and
closed at once by the kernel backlog; nothing is ever read or served on the port.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("hpc-connector")


class ReadyPort:
    def __init__(self, port: int | None, host: str = "0.0.0.0") -> None:  # noqa: S104 - the pod's own IP
        self.port = port
        self.host = host
        self._sock: socket.socket | None = None

    @property
    def open(self) -> bool:
        return self._sock is not None

    def set(self, ready: bool) -> None:
        """Listen while ready, not otherwise (idempotent; a failure is logged, never fatal)."""
        if self.port is None or ready == self.open:
            return
        if not ready:
            self.close()
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(16)
            self._sock = sock
        except OSError as exc:
            log.warning("readiness port %d cannot be opened (%s); the pod shows Ready late", self.port,
                        exc.strerror)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
