"""`hpc-offload certs generate`: a chain that verifies for the Service names, safe key files."""

from __future__ import annotations

import datetime as dt
import stat

from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs.cli import certs
from certs.generate import sans_of


def run(*args: str) -> str:
    result = CliRunner().invoke(certs, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def generate(out, *extra: str) -> str:
    return run("generate", "--service", "hpc-offload-webhook", "--namespace", "hpc-offload",
               "--out", str(out), *extra)


def verify(out, name: str) -> None:
    """Full RFC 5280 path validation as a TLS client does it, for DNS `name`."""
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(name))
    chain = verifier.verify(leaf, [])
    assert chain[-1] == ca


def test_generate_makes_a_verifiable_chain_with_the_service_names(tmp_path):
    out = tmp_path / "certs"
    assert "wrote" in generate(out, "--dns", "webhook.example.org", "--ip", "127.0.0.1")
    dns, ips = sans_of((out / "tls.crt").read_bytes())
    assert dns == ["hpc-offload-webhook.hpc-offload.svc",
                   "hpc-offload-webhook.hpc-offload.svc.cluster.local",
                   "hpc-offload-webhook.hpc-offload", "hpc-offload-webhook",
                   "webhook.example.org"]
    assert ips == ["127.0.0.1"]
    for name in dns:
        verify(out, name)
    for key in ("ca.key", "tls.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=364)


def test_generate_is_idempotent_and_renews_only_when_due(tmp_path):
    out = tmp_path / "certs"
    generate(out, "--days", "20")
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "kept" in generate(out, "--days", "20", "--renew-days", "10")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    # Within --renew-days of expiry: a new leaf, signed by the same CA (caBundle unchanged).
    assert "expires" in generate(out, "--days", "20", "--renew-days", "30")
    assert (out / "ca.crt").read_bytes() == first["ca.crt"]
    assert (out / "tls.crt").read_bytes() != first["tls.crt"]
    verify(out, "hpc-offload-webhook.hpc-offload.svc")

    # A SAN that is not covered yet forces a new leaf too.
    assert "missing SANs" in generate(out, "--dns", "extra.example.org", "--renew-days", "10")
    verify(out, "extra.example.org")

    # --force makes everything new, CA included.
    assert "forced" in generate(out, "--force")
    assert (out / "ca.crt").read_bytes() != first["ca.crt"]
    verify(out, "hpc-offload-webhook")


def test_a_mismatched_key_is_replaced(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a)
    generate(b)
    (a / "tls.key").write_bytes((b / "tls.key").read_bytes())
    assert "does not match" in generate(a)
    verify(a, "hpc-offload-webhook")
