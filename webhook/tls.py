"""Serving certificate that follows its files: rotation without a restart (kubebuilder#2342).

gunicorn (>= 21) asks its `ssl_context(conf, default_factory)` hook for a context on every
accepted connection. We answer with a cached context and only stat the two files each time
(microseconds); when either changed (a Secret update swaps the kubelet's `..data` symlink, so
inode and mtime change), the chain is loaded again. A half-written or mismatched pair keeps
the previous context and is retried on the next change, so a rotation never breaks serving.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

log = logging.getLogger("hpc_offload.tls")

Signature = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class CertInfo:
    """What is being served, for /readyz and logs."""

    serial: str
    not_after: str
    loaded_at_mtime_ns: int


def _signature(*paths: str) -> Signature | None:
    try:
        return tuple(
            (st.st_ino, st.st_mtime_ns, st.st_size) for st in (os.stat(p) for p in paths)
        )
    except OSError:
        return None


def _plain_factory(certfile: str, keyfile: str) -> Callable[[], ssl.SSLContext]:
    def factory() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        return ctx

    return factory


WATCH_INTERVAL = 1.0  # seconds between checks of the certificate files


class ReloadingContext:
    """An `ssl.SSLContext` re-made whenever the certificate or key file changes."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._sig: Signature | None = None
        self._tried: Signature | None = None
        self.info: CertInfo | None = None
        self.error: str | None = None
        self._factory: Callable[[], ssl.SSLContext] | None = None  # gunicorn's, once seen

    def context(self, factory: Callable[[], ssl.SSLContext] | None = None) -> ssl.SSLContext:
        """The current context, re-loaded first if the files changed. Raises only if no
        certificate could ever be loaded."""
        self.refresh(factory)
        if self._ctx is None:
            raise ssl.SSLError(f"no usable certificate: {self.error}")
        return self._ctx

    def refresh(self, factory: Callable[[], ssl.SSLContext] | None = None) -> bool:
        """Reload if the files changed since the last attempt; True if a context is loaded."""
        sig = _signature(self.certfile, self.keyfile)
        if sig is None:
            self.error = "certificate or key file missing"
            return self._ctx is not None
        if sig == self._tried:
            return self._ctx is not None
        with self._lock:
            if sig != self._tried:
                self._load(sig, factory or _plain_factory(self.certfile, self.keyfile))
        return self._ctx is not None

    def _load(self, sig: Signature, factory: Callable[[], ssl.SSLContext]) -> None:
        self._tried = sig
        try:
            ctx = factory()
            ctx.minimum_version = max(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
            with open(self.certfile, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.error = f"{exc.__class__.__name__}: {exc}"
            log.warning("certificate not (re)loaded, keeping the previous one: %s", self.error)
            return
        self._ctx, self._sig, self.error = ctx, sig, None
        self.info = CertInfo(
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.isoformat(),
            loaded_at_mtime_ns=sig[0][1],
        )
        log.info("serving certificate loaded", extra={"serial": self.info.serial,
                                                      "not_after": self.info.not_after})

    def gunicorn_hook(self) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
        """The `ssl_context` server hook: keeps gunicorn's own settings (ciphers, ALPN)."""

        def ssl_context(_conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            self._factory = factory
            return self.context(factory)

        return ssl_context

    def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Also reload on a timer, in this process. A worker otherwise reloads only when it
        accepts a connection: one that took none while a renewed certificate was in place
        would keep the one before, and keep it if the next file is broken."""

        def loop() -> None:
            while True:
                time.sleep(interval)
                self.refresh(self._factory)

        threading.Thread(target=loop, name="tls-reload", daemon=True).start()
