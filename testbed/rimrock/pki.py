"""A small grid PKI for the Rimrock-compatible server: a CA, a user certificate, proxies.

A grid proxy (RFC 3820, what `grid-proxy-init`/`voms-proxy-init` write to /tmp/x509up_uN) is
one PEM file: a short-lived proxy certificate, its private key, then the user's certificate.
The proxy is signed by the user's key, its subject is the user's subject plus one `CN=<serial>`,
and it carries the critical ProxyCertInfo extension. Rimrock takes that file, base64-encoded,
in the `PROXY` header; it names the user by the proxy's issuer DN (the user's DN) and refuses a
proxy whose chain does not verify (JGlobus `X509Credential.verify`: signatures, validity, a
trusted CA). Here the trusted CA is the testbed's own.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# ProxyCertInfo (RFC 3820 §3.8) with the policy id-ppl-inheritAll: DER of
# SEQUENCE { SEQUENCE { OBJECT IDENTIFIER 1.3.6.1.5.5.7.21.1 } }
PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")
# Rimrock's fallback: a PL-Grid login is the CN of the user's DN that starts with "plg"
_PLG_LOGIN = re.compile(r".+,CN=(plg.*?)(,.*$|$)")
_KEY_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.S)


class ProxyUnreadable(ValueError):
    """Not a proxy Rimrock can read, or no user to map it to (Rimrock: 403, no message)."""


class ProxyRejected(ValueError):
    """A readable proxy that does not verify (Rimrock: 403 "Bad credentials provided: …")."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def globus_dn(name: x509.Name) -> str:
    """`O=a,OU=b,CN=c`: RDNs in certificate order, as Globus tools print them."""
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)


def make_ca(common_name: str, years: int = 10) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hpc-offload"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_user(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, login: str,
              days: int = 365) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The user's long-lived certificate (what ~/.globus/usercert.pem holds)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hpc-offload"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "testbed"),
                      x509.NameAttribute(NameOID.COMMON_NAME, login)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def make_proxy(user: x509.Certificate, user_key: rsa.RSAPrivateKey, lifetime: float = 12 * 3600,
               not_before: dt.datetime | None = None) -> str:
    """A proxy PEM (proxy certificate, its PKCS#8 key, the user's certificate). Secret."""
    key = _key()
    serial = secrets.randbits(31) | 1
    subject = x509.Name([*user.subject.rdns,
                         x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                            str(serial))])])
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(seconds=lifetime) + dt.timedelta(minutes=5),
              user.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(user.subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.UnrecognizedExtension(PROXY_CERT_INFO, _INHERIT_ALL), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=True, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(user_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (cert.public_bytes(pem).decode()
            + key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
            + user.public_bytes(pem).decode())


@dataclass(frozen=True)
class Proxy:
    """A parsed proxy: its certificate chain (proxy first) and the user's login."""

    chain: tuple[x509.Certificate, ...]
    login: str
    key_matches: bool


def parse(pem: str, mappings: Mapping[str, str]) -> Proxy:
    """Read the proxy and name its user: a DN prefix from `mappings` (login → DN prefix, as
    Rimrock's `mapping.<login>` settings), else a `CN=plg…` of the issuer DN."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(pem.encode()))
        block = _KEY_BLOCK.search(pem)
        if block is None:
            raise ValueError("no private key")
        # the key is only compared with the certificate; RSA's full key check costs ~30 ms
        # of CPU per request (300 ms on a loaded 2-core machine) and proves nothing more here
        key = serialization.load_pem_private_key(block.group(0).encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ProxyUnreadable(f"not a proxy: {type(exc).__name__}") from None
    issuer = globus_dn(chain[0].issuer)
    login = next((user for user, prefix in mappings.items() if issuer.startswith(prefix)), None)
    if login is None:
        match = _PLG_LOGIN.match(issuer)
        if match is None:
            raise ProxyUnreadable(f"Could not extract user name from the supplied user proxy "
                                  f"with DN {issuer}")
        login = match.group(1)
    key_pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_pub = chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return Proxy(chain, login, key_pub == cert_pub)


def verify(proxy: Proxy, trusted: Sequence[x509.Certificate], now: dt.datetime | None = None) -> None:
    """Raise ProxyRejected unless the chain runs from the proxy to a trusted CA, every link
    is in its validity period, each proxy's subject is its issuer's plus one CN, and the key
    is the proxy's."""
    now = now or _now()
    if not proxy.key_matches:
        raise ProxyRejected("the private key does not belong to the proxy certificate")
    for cert in proxy.chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ProxyRejected(f"certificate {globus_dn(cert.subject)} is not valid now "
                                f"(valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
    for child, parent in zip(proxy.chain, proxy.chain[1:], strict=False):
        if list(child.subject.rdns[:-1]) != list(parent.subject.rdns):
            raise ProxyRejected(f"{globus_dn(child.subject)} is not a proxy of "
                                f"{globus_dn(parent.subject)}")
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ProxyRejected(f"{globus_dn(child.subject)}: bad signature ({exc})") from None
    last = proxy.chain[-1]
    for ca in trusted:
        try:
            last.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise ProxyRejected(f"no trusted CA issued {globus_dn(last.subject)} "
                        f"(issuer {globus_dn(last.issuer)})")


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("expected an RSA key")
    return key
