"""The relay's memory per TLS connection (one per connector): the read buffer asyncio keeps
for each is what grows with the number of pods. Counted in bytes, on a real aiohttp server."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

from certs.generate import ensure_dir
from relay.local import free_port
from relay.memory import TLS_READ_BUFFER, lean_tls_buffers


async def serve_and_post(certs: Path, body: bytes) -> dict[str, int]:
    """One request over TLS: what the server received and its connection's read buffer."""

    async def echo(request: web.Request) -> web.Response:
        data = await request.read()
        protocol = request.transport._ssl_protocol  # type: ignore[union-attr]  # noqa: SLF001
        return web.json_response({"received": len(data), "buffer": len(protocol._ssl_buffer)})  # noqa: SLF001

    app = web.Application(client_max_size=len(body) + 1)
    app.router.add_post("/", echo)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context).start()
    try:
        client_context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        async with ClientSession(connector=TCPConnector(ssl=client_context)) as client, \
                client.post(f"https://127.0.0.1:{port}/", data=body) as response:
            return await response.json()  # type: ignore[no-any-return]
    finally:
        await runner.cleanup()


def test_each_connection_reads_through_a_small_buffer_and_a_large_body_still_arrives(tmp_path, monkeypatch):
    monkeypatch.setattr(sslproto.SSLProtocol, "max_size", sslproto.SSLProtocol.max_size)  # restored after
    ensure_dir(tmp_path, ["localhost"], ["127.0.0.1"], 30, 1, False)
    body = bytes(range(256)) * (12 * 4096)  # 12 MiB: the relay's largest request (a profile upload)
    assert asyncio.run(serve_and_post(tmp_path, body))["buffer"] == 256 * 1024  # asyncio's own
    lean_tls_buffers()
    assert asyncio.run(serve_and_post(tmp_path, body)) == {"received": len(body), "buffer": TLS_READ_BUFFER}
