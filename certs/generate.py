"""CA and serving certificate generation (pure crypto, plus atomic file writes).

The webhook needs a serving certificate the API server trusts through `caBundle`. We make a
small private CA and a leaf for the Service's DNS names. The CA is kept across leaf renewals
so `caBundle` changes only when the CA itself is renewed (replicas serving different CAs is a
classic injector outage, vault-helm#580).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
DEFAULT_DAYS = 365
DEFAULT_RENEW_DAYS = 30
# The CA outlives the leaves it signs, so a leaf renewal never has to touch caBundle.
CA_DAYS_FACTOR = 10
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clock skew between nodes


@dataclass(frozen=True)
class Bundle:
    """A CA and a serving certificate, as PEM bytes (the names Kubernetes uses)."""

    ca_crt: bytes
    ca_key: bytes | None  # None when only the public CA is known (e.g. read from a Secret)
    tls_crt: bytes
    tls_key: bytes


def service_names(service: str, namespace: str, extra: tuple[str, ...] = ()) -> list[str]:
    """DNS SANs the API server may use to reach `service` in `namespace`, plus `extra`."""
    names = [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]
    return names + [n for n in extra if n not in names]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(common_name: str, days: int) -> tuple[bytes, bytes]:
    """A self-signed CA (cert PEM, key PEM) that may only sign leaves (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def new_leaf(
    ca_crt: bytes, ca_key: bytes, dns: list[str], ips: list[str], days: int
) -> tuple[bytes, bytes]:
    """A serving certificate (cert PEM, key PEM) for `dns`/`ips`, signed by the CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # A leaf never outlives its CA (clients would reject the chain first).
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, key_cert_sign=False,
                crl_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def why_renew(
    bundle: Bundle, dns: list[str], ips: list[str], renew_days: int
) -> str | None:
    """Why `bundle` cannot be kept as is (None when it is fine): expiry, SANs, chain, key."""
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_crt)
        leaf = x509.load_pem_x509_certificate(bundle.tls_crt)
        leaf_key = serialization.load_pem_private_key(bundle.tls_key, password=None)
    except ValueError as exc:
        return f"unreadable: {exc}"
    horizon = _now() + dt.timedelta(days=renew_days)
    if ca.not_valid_after_utc <= horizon:
        return f"CA expires {ca.not_valid_after_utc:%Y-%m-%d}"
    if leaf.not_valid_after_utc <= horizon:
        return f"serving certificate expires {leaf.not_valid_after_utc:%Y-%m-%d}"
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return "tls.crt is not signed by ca.crt"
    if leaf_key.public_key() != leaf.public_key():
        return "tls.key does not match tls.crt"
    if bundle.ca_key is not None:
        ca_key = serialization.load_pem_private_key(bundle.ca_key, password=None)
        if ca_key.public_key() != ca.public_key():
            return "ca.key does not match ca.crt"
    have_dns, have_ips = sans_of(bundle.tls_crt)
    missing = [d for d in dns if d not in have_dns] + [i for i in ips if i not in have_ips]
    if missing:
        return f"missing SANs: {', '.join(missing)}"
    return None


def sans_of(pem: bytes) -> tuple[list[str], list[str]]:
    """The DNS and IP subject alternative names of a certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(i) for i in ext.get_values_for_type(x509.IPAddress)]
    return ext.get_values_for_type(x509.DNSName), ips


def ca_still_usable(ca_crt: bytes, ca_key: bytes | None, renew_days: int) -> bool:
    """Whether a CA may sign a fresh leaf (so caBundle stays the same)."""
    if ca_key is None:
        return False
    try:
        ca = x509.load_pem_x509_certificate(ca_crt)
        key = serialization.load_pem_private_key(ca_key, password=None)
    except ValueError:
        return False
    horizon = _now() + dt.timedelta(days=renew_days)
    return ca.not_valid_after_utc > horizon and key.public_key() == ca.public_key()


def make_bundle(
    dns: list[str],
    ips: list[str],
    days: int = DEFAULT_DAYS,
    ca: tuple[bytes, bytes] | None = None,
) -> Bundle:
    """A serving certificate for `dns`/`ips`, signed by `ca` (cert, key) or a new CA."""
    if ca is None:
        ca = new_ca(f"hpc-offload webhook CA ({dns[0]})", days * CA_DAYS_FACTOR)
    crt, key = new_leaf(ca[0], ca[1], dns, ips, days)
    return Bundle(ca_crt=ca[0], ca_key=ca[1], tls_crt=crt, tls_key=key)


def renew(
    old: Bundle | None,
    dns: list[str],
    ips: list[str],
    days: int = DEFAULT_DAYS,
    renew_days: int = DEFAULT_RENEW_DAYS,
    force: bool = False,
) -> tuple[Bundle, str | None]:
    """Keep `old` when it is still good, else a new bundle; returns (bundle, why renewed).

    A still-good CA in `old` signs the new leaf, so renewing a leaf leaves caBundle alone.
    """
    reason = "forced" if force else ("none yet" if old is None else why_renew(
        old, dns, ips, renew_days))
    if reason is None and old is not None:
        return old, None
    ca = None
    if old is not None and not force and ca_still_usable(old.ca_crt, old.ca_key, renew_days):
        ca = (old.ca_crt, old.ca_key or b"")
    return make_bundle(dns, ips, days, ca), reason


# --- files -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` in one rename, so a reloading server never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_dir(out: Path) -> Bundle | None:
    """The bundle stored in `out`, or None if any file is missing."""
    try:
        return Bundle(
            ca_crt=(out / CA_CERT).read_bytes(),
            ca_key=(out / CA_KEY).read_bytes(),
            tls_crt=(out / TLS_CERT).read_bytes(),
            tls_key=(out / TLS_KEY).read_bytes(),
        )
    except FileNotFoundError:
        return None


def write_dir(out: Path, bundle: Bundle) -> None:
    """Write the bundle; keys 0600. The key goes first: a watcher then sees the pair change
    in the order key, cert, and retries until they match."""
    out.mkdir(parents=True, exist_ok=True)
    if bundle.ca_key is not None:
        write_atomic(out / CA_KEY, bundle.ca_key, 0o600)
    write_atomic(out / CA_CERT, bundle.ca_crt, 0o644)
    write_atomic(out / TLS_KEY, bundle.tls_key, 0o600)
    write_atomic(out / TLS_CERT, bundle.tls_crt, 0o644)


def ensure_dir(
    out: Path,
    dns: list[str],
    ips: list[str],
    days: int = DEFAULT_DAYS,
    renew_days: int = DEFAULT_RENEW_DAYS,
    force: bool = False,
) -> str | None:
    """Make `out` hold a good bundle; returns why files were (re)written, None if kept."""
    bundle, reason = renew(read_dir(out), dns, ips, days, renew_days, force)
    if reason is not None:
        write_dir(out, bundle)
    return reason
