"""gunicorn's gthread worker, except that a request reaches a thread only once it is all read.

gthread hands a connection to a thread as soon as its first byte arrives, and the thread then
reads the rest with blocking calls and no time limit: a client that sends the headers and one
byte of a 1,000-byte body holds a thread for ever, and 8 such connections (2 workers × 4
threads) stopped every admission in the cluster (issue 12, item 10). Here a thread reads only
what is already there, without blocking (TLS handshake included); a request still incomplete
goes back to the poller, costing no thread, and a connection whose request is not complete
`read_timeout` seconds after it started is closed. The answer is bounded the same way: a
client that does not read it is dropped after `answer_timeout`.

Everything else (parsing, keep-alive, the WSGI call) is gthread's own code, run on the bytes
collected here. A body over the webhook's limit is drained and refused here with 413.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import time
from typing import Any

from gunicorn import http
from gunicorn import sock as gsock
from gunicorn.workers import gthread

log = logging.getLogger("hpc_offload.request")

READ_TIMEOUT = 5.0  # the API server's own webhook timeout is timeoutSeconds (5 s here)
ANSWER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY = 7 * 1024 * 1024  # = webhook.app.MAX_BODY (kept apart: no Flask import here)
DRAIN_LIMIT = 4 * MAX_BODY  # an oversized body is read (and dropped) this far for our 413
RECV_BYTES = 256 * 1024

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _Chunked:
    """Where a chunked body ends (RFC 9112 §7.1), fed piece by piece; keeps no data."""

    def __init__(self) -> None:
        self.state, self.line, self.left, self.size = "size", bytearray(), 0, 0
        self.done = self.bad = False

    def feed(self, data: bytes) -> int:
        """Consume up to the end of the body; returns how many bytes were its own."""
        pos = 0
        while pos < len(data) and not (self.done or self.bad):
            if self.state == "data":
                take = min(self.left, len(data) - pos)
                pos, self.left = pos + take, self.left - take
                if not self.left:
                    self.state = "crlf"
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                self.bad = len(self.line) > 8192
                return len(data)
            self.line += data[pos:end]
            pos = end + 1
            line = bytes(self.line).rstrip(b"\r")
            self.line.clear()
            if self.state == "crlf":
                self.state, self.bad = "size", bool(line)
            elif self.state == "trailer":
                self.done = not line
            else:
                size_text = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size_text):
                    self.bad = True
                    break
                self.left = int(size_text, 16)
                self.size += self.left
                self.state = "data" if self.left else "trailer"
        return pos


class RequestBuffer:
    """One HTTP/1.1 request, collected until it is complete (or refused)."""

    def __init__(self, leftover: bytes = b"", max_body: int = MAX_BODY,
                 drain_limit: int = DRAIN_LIMIT) -> None:
        self.data = bytearray()
        self.max_body, self.drain_limit = max_body, drain_limit
        self.header_end: int | None = None
        self.length: int | None = None
        self.chunked: _Chunked | None = None
        self.expect_continue = self.continue_sent = False
        self.complete = False
        self.refusal: tuple[int, str] | None = None  # (status, reason) when refused
        self.path = ""
        self._dropped = 0  # body bytes read and discarded (an oversized body)
        if leftover:
            self.feed(leftover)

    @property
    def finished(self) -> bool:
        return self.complete or (self.refusal is not None and self._drained)

    @property
    def _drained(self) -> bool:
        if self.refusal is None or self.refusal[0] != 413:
            return True
        if self._dropped >= self.drain_limit:
            return True
        if self.chunked is not None:
            return self.chunked.done or self.chunked.bad
        return self.length is not None and self._dropped >= self.length

    def feed(self, chunk: bytes) -> None:
        if self.refusal is not None:  # draining an oversized body: count, keep nothing
            if self.chunked is not None:
                self.chunked.feed(chunk)
            self._dropped += len(chunk)
            return
        start = len(self.data)
        self.data += chunk
        if self.header_end is None:
            end = self.data.find(b"\r\n\r\n", max(0, start - 3))
            if end < 0:
                if len(self.data) > MAX_HEADER_BYTES:
                    self.refusal = (431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
                return
            self.header_end = end + 4
            self._read_headers(bytes(self.data[:end]))
            if self.refusal is not None or self.complete:
                return
            chunk = bytes(self.data[self.header_end:])
        self._body(chunk)

    def _body(self, new: bytes) -> None:
        assert self.header_end is not None
        if self.chunked is not None:
            self.chunked.feed(new)
            if self.chunked.size > self.max_body:
                self._refuse_body()
            elif self.chunked.done or self.chunked.bad:
                self.complete = True
        elif self.length is not None and self.length > self.max_body:
            self._refuse_body()
        else:
            self.complete = len(self.data) - self.header_end >= (self.length or 0)

    def _read_headers(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        self.path = parts[1].decode("latin-1") if len(parts) > 1 else ""
        lengths, chunked = set(), False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                chunked = value.split(b",")[-1].strip() == b"chunked"
            elif name == b"expect":
                self.expect_continue = value == b"100-continue"
        if chunked and not lengths:
            self.chunked = _Chunked()
        elif len(lengths) == 1 and (value := lengths.pop()).isdigit() and not chunked:
            self.length = int(value)
            if self.length > self.drain_limit:  # not worth reading: answer at once
                self.refusal = (413, f"request body larger than {self.max_body} bytes")
                self._dropped = self.drain_limit
        elif lengths or chunked:  # conflicting or bad framing: gunicorn answers it (400)
            self.complete = True

    def _refuse_body(self) -> None:
        assert self.header_end is not None
        self._dropped = len(self.data) - self.header_end
        del self.data[:]
        self.refusal = (413, f"request body larger than {self.max_body} bytes")


class _Bounded:
    """Blocking with a deadline. gunicorn switches a connection to blocking before it parses
    and answers; here that means "with a timeout until the deadline", and a whole answer that
    is not taken in time ends the connection (EPIPE: gunicorn closes it quietly)."""

    deadline: float | None = None

    def setblocking(self, flag: bool) -> None:
        if flag and self.deadline is not None:
            self.settimeout(max(self.deadline - time.monotonic(), 0.001))  # type: ignore[attr-defined]
        else:
            super().setblocking(flag)  # type: ignore[misc]

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self.deadline is None:
            return super().sendall(data, flags)  # type: ignore[misc,no-any-return]
        with memoryview(data) as view, view.cast("B") as octets:
            sent = 0
            while sent < len(octets):
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise BrokenPipeError(32, "the client did not take the answer in time")
                self.settimeout(left)  # type: ignore[attr-defined]
                try:
                    sent += self.send(octets[sent:])  # type: ignore[attr-defined]
                except TimeoutError:
                    raise BrokenPipeError(32, "the client did not take the answer in time") \
                        from None
        return None


class BoundedSSLSocket(_Bounded, ssl.SSLSocket):
    pass


class BoundedSocket(_Bounded, socket.socket):
    pass


class _State:
    """A connection's request in progress."""

    def __init__(self, deadline: float, leftover: bytes) -> None:
        self.deadline = deadline
        self.request = RequestBuffer(leftover)


class BufferedThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread that reads each request whole, without blocking, before a thread serves it."""

    read_timeout = READ_TIMEOUT
    answer_timeout = ANSWER_TIMEOUT

    def handle(self, conn: Any) -> Any:
        try:
            if not conn.initialized:
                self._start(conn)
            state = getattr(conn, "hpc_state", None)
            if state is None:
                leftover = conn.parser.unreader.take_buffered()
                state = conn.hpc_state = _State(time.monotonic() + self.read_timeout, leftover)
            if time.monotonic() > state.deadline:
                return False
            if not self._fill(conn, state.request):
                return gthread._DEFER
        except (OSError, ValueError):  # ssl.SSLError is an OSError: a broken client
            return False
        conn.hpc_state = None
        request = state.request
        if request.refusal is not None:
            self._refuse(conn, request)
            return False
        buf = conn.parser.unreader.buf
        buf.seek(0, 2)
        buf.write(request.data)
        conn.data_ready = True
        conn.sock.deadline = time.monotonic() + self.answer_timeout
        try:
            return super().handle(conn)
        finally:
            conn.sock.deadline = None

    def _start(self, conn: Any) -> None:
        """What gthread's TConn.init does, without blocking: the TLS handshake happens in
        `_fill`, a step at a time."""
        conn.initialized = True
        raw = conn.sock
        if self.cfg.is_ssl:
            context = gsock.ssl_context(self.cfg)
            context.sslsocket_class = BoundedSSLSocket
            conn.sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False,
                                            suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            conn.hpc_handshaken = False
        else:
            conn.sock = BoundedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            conn.hpc_handshaken = True
        conn.sock.setblocking(False)
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)

    def _fill(self, conn: Any, request: RequestBuffer) -> bool:
        """Read what is there; True once the request is complete or refused."""
        sock = conn.sock
        sock.setblocking(False)
        try:
            if not conn.hpc_handshaken:
                sock.do_handshake()
                conn.hpc_handshaken = True
            while not request.finished:
                chunk = sock.recv(RECV_BYTES)
                if not chunk:  # the client closed: whatever is here is all there is
                    raise ConnectionResetError("closed by the client")
                request.feed(chunk)
                if request.expect_continue and not request.continue_sent \
                        and request.header_end is not None and request.refusal is None:
                    request.continue_sent = True
                    sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        return True

    def _refuse(self, conn: Any, request: RequestBuffer) -> None:
        """Answer a request refused before parsing (413, 431) and close."""
        assert request.refusal is not None
        status, reason = request.refusal
        body = json.dumps({"error": reason}).encode()
        title = {413: "Payload Too Large", 431: "Request Header Fields Too Large"}[status]
        head = (f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        if request.path == "/mutate":
            from webhook import metrics

            metrics.observe("bad_request", None)
            log.info("admission", extra={"outcome": "bad_request", "status": status,
                                         "reason": reason, "remote": _host(conn.client)})
        with contextlib.suppress(OSError):  # a client gone already needs no answer
            conn.sock.deadline = time.monotonic() + self.answer_timeout
            conn.sock.setblocking(True)
            conn.sock.sendall(head + body)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """As gthread's, except a connection to close is closed at once. gthread lingers up
        to 2 s on the worker's one event loop waiting for the client's FIN (RFC 9112 §9.6):
        a client that sends junk and never closes stalled every connection of the worker
        that long, once per connection."""
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - as gthread: any failure closes the connection
            result = False
        if result is gthread._DEFER or result:
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        _close_now(conn.sock)

    def murder_pending(self) -> None:
        """Close connections whose request is not complete by its deadline (gthread's own
        limit for them is the keep-alive timeout, 75 s)."""
        now = time.monotonic()
        for conn in list(self.pending_conns):
            state = getattr(conn, "hpc_state", None)
            limit = min(conn.timeout, state.deadline) if state is not None else conn.timeout
            if limit > now:
                continue
            self.pending_conns.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()


def _close_now(sock: Any) -> None:
    """Send FIN, drop what the client already sent (so the close is not a reset that could cut
    off our last answer), close; never wait."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError):
        sock.close()


def _host(client: Any) -> str | None:
    return str(client[0]) if isinstance(client, tuple | list) and client else None
