"""The relay's memory per connection: every connector holds one HTTPS connection (its long
poll), so a thousand pods are a thousand TLS connections in one process.

asyncio gives each TLS connection a 256 KiB read buffer (`SSLProtocol.max_size`), zeroed when
the connection opens, hence resident: 277 KiB a connection in all, measured with the relay
(1,000 connectors: 270 MiB of the relay's RSS). The relay's requests are small (a long poll is
a few hundred bytes; the largest, a profile upload, is read in more rounds), so 32 KiB does:
58 KiB a connection. Call `lean_tls_buffers()` once, before the server starts.
"""

from __future__ import annotations

TLS_READ_BUFFER = 32 * 1024  # two TLS records


def lean_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Every TLS connection asyncio opens from now on reads through `size` bytes."""
    from asyncio import sslproto

    if hasattr(sslproto.SSLProtocol, "max_size"):  # CPython >= 3.11; older ones keep their own
        sslproto.SSLProtocol.max_size = size
