"""The relay: one site session per (namespace, profile, credential) shared by every connector
that uses it (issue 11, docs/relay.md). `relay.protocol` is the wire format both sides share
and imports nothing heavy; the server (`relay.server`) needs the webhook extra (aiohttp)."""
