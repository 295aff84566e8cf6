"""Certificate helpers for conec_actors' QUIC/TLS endpoints.

Every QUIC connection in conec_actors is TLS 1.3, so each endpoint needs a
certificate and private key. This module makes them without calling the
``openssl`` command line tool:

* :func:`self_signed` makes a certificate that is its own trust anchor (give
  its PEM as the peer's ``cadata``), for development and for closed
  deployments that pin one certificate.
* :func:`new_ca` and :func:`issue` make a small private CA and leaf
  certificates signed by it, so that peers only need to trust the CA.

Certificates and keys are passed around as a :class:`CertKey` of PEM bytes.
All keys are ECDSA P-256, all signatures SHA-256 and private keys are
unencrypted PKCS#8 PEM, so keep key files private (:meth:`CertKey.write`
creates them with mode ``0o600`` and never writes through a symbolic link).

:func:`load_pem` and :func:`cert_names` are small helpers for configuration
code that takes certificates either inline or as file paths.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertKey",
    "cert_names",
    "issue",
    "load_pem",
    "new_ca",
    "self_signed",
]

#: Backdating of ``not_valid_before``, to tolerate clock skew between peers.
_CLOCK_SKEW = datetime.timedelta(hours=1)
#: Lifetime of leaf and self-signed certificates (the CA/B Forum's old maximum).
_LEAF_LIFETIME = datetime.timedelta(days=825)
#: Lifetime of CA certificates (ten years).
_CA_LIFETIME = datetime.timedelta(days=3650)

_KEY_FILE_MODE = 0o600
_CERT_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class CertKey:
    """A certificate and its private key, both PEM-encoded.

    ``cert_pem`` is the X.509 certificate; ``key_pem`` is the matching
    unencrypted PKCS#8 private key.
    """

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert_der(self) -> bytes:
        """The certificate in DER encoding."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.public_bytes(serialization.Encoding.DER)

    def write(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Write the key to ``key_path``, then the certificate to ``cert_path``.

        Existing files are replaced. Each file is written under a fresh name
        in its directory (created with ``O_EXCL | O_NOFOLLOW``, so nothing
        planted there is followed; the key with mode ``0o600`` from the
        start) and renamed into place, which replaces a symbolic link at the
        final name rather than writing through it.
        """
        _replace_with(Path(key_path), self.key_pem, _KEY_FILE_MODE)
        _replace_with(Path(cert_path), self.cert_pem, _CERT_FILE_MODE)


def _replace_with(path: Path, data: bytes, mode: int) -> None:
    """Atomically make `path` a new file of `mode` holding `data`."""
    # mkstemp opens O_CREAT | O_EXCL | O_NOFOLLOW with mode 0600 under a random name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != _KEY_FILE_MODE:
                os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def self_signed(names: list[str]) -> CertKey:
    """Make a self-signed certificate valid for ``names``.

    Each name that parses as an IP address becomes an IPAddress subject
    alternative name, every other one a DNSName. The subject's common name is
    the first name (its first 61 characters and ``...`` when it is longer than
    a common name may be; the alternative names carry it whole). The
    certificate is not a CA (``BasicConstraints ca=False``) but can be trusted
    directly: give its ``cert_pem`` as the peer's ``cadata``. It is valid from
    one hour ago for 825 days.

    Raises:
        ValueError: if ``names`` is empty or contains an empty name.
    """
    sans = _subject_alt_names(names)
    key = _new_key()
    name = _leaf_name(names[0])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    cert = _leaf(_base(name, name, key, _LEAF_LIFETIME), sans, aki).sign(key, hashes.SHA256())
    return CertKey(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def new_ca(common_name: str) -> CertKey:
    """Make a self-signed CA certificate with subject CN ``common_name``.

    The CA may sign certificates (``keyCertSign``) and CRLs (``cRLSign``),
    has no path length limit and is valid from one hour ago for ten years.
    Use it with :func:`issue`, and give its ``cert_pem`` to peers as
    ``cadata``.

    Raises:
        ValueError: if ``common_name`` is empty.
    """
    if not common_name:
        raise ValueError("new_ca() needs a non-empty common_name")
    key = _new_key()
    name = _name(common_name)
    builder = (
        _base(name, name, key, _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
    )
    cert = builder.sign(key, hashes.SHA256())
    return CertKey(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def issue(ca: CertKey, names: list[str]) -> CertKey:
    """Make a leaf certificate for ``names``, signed by ``ca``.

    Subject alternative names and common name are as for
    :func:`self_signed` (a long first name is cut short in the common name
    only). The leaf is not a CA, may be used for TLS server
    and client authentication, carries the CA's key identifier as its
    AuthorityKeyIdentifier and is valid from one hour ago for 825 days
    (though it stops verifying when the CA certificate expires).

    Raises:
        ValueError: if ``names`` is empty or contains an empty name, if
            ``ca`` is not a CA certificate, or if its key does not match its
            certificate.
        TypeError: if the CA key is of a type that cannot sign certificates
            here (only EC and RSA keys are supported).
    """
    sans = _subject_alt_names(names)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"issue() supports EC and RSA CA keys only, not {type(ca_key).__name__}")
    try:
        basic = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise ValueError("issue() needs a CA certificate (BasicConstraints ca=True)")
    if ca_key.public_key() != ca_cert.public_key():
        raise ValueError("issue(): the CA's private key does not match its certificate")

    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    key = _new_key()
    builder = _leaf(_base(_leaf_name(names[0]), ca_cert.subject, key, _LEAF_LIFETIME), sans, aki)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertKey(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def _base(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
          lifetime: datetime.timedelta) -> x509.CertificateBuilder:
    """What every certificate made here has: names, key, serial, validity
    (from `_CLOCK_SKEW` ago) and its own key identifier."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf(builder: x509.CertificateBuilder, sans: list[x509.GeneralName],
          aki: x509.AuthorityKeyIdentifier) -> x509.CertificateBuilder:
    """A TLS server and client leaf (not a CA) for `sans`."""
    return (
        builder
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(_server_client_eku(), critical=False)
        .add_extension(aki, critical=False)
    )


def load_pem(value: bytes | str | os.PathLike[str]) -> bytes:
    """Return PEM content given inline or as a file path.

    ``bytes`` are taken as the PEM content itself and returned unchanged; a
    ``str`` or path-like object is a path to a file whose bytes are returned.

    Raises:
        FileNotFoundError: if the file does not exist (the message names it).
    """
    if isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"PEM file not found: {str(path)!r}", str(path)
        ) from None


def cert_names(cert_pem: bytes) -> list[str]:
    """Return the DNS names and IP addresses a PEM certificate is valid for.

    The names come from the subject alternative name extension, in its
    order, IP addresses in their standard text form. A certificate without
    that extension gives an empty list.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for general_name in san:
        if isinstance(general_name, x509.DNSName):
            names.append(general_name.value)
        elif isinstance(general_name, x509.IPAddress):
            names.append(str(general_name.value))
    return names


def _subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """Check ``names`` and turn them into DNSName / IPAddress SAN entries."""
    if isinstance(names, str):
        raise TypeError("names must be a list of names, not a single str")
    if not names:
        raise ValueError("a certificate needs at least one DNS name or IP address in names")
    sans: list[x509.GeneralName] = []
    for name in names:
        if not name:
            raise ValueError(f"empty name in certificate names {names!r}")
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            sans.append(x509.DNSName(name))
        else:
            sans.append(x509.IPAddress(ip))
    return sans


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Generate a fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """An X.509 name with just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


#: X.509's upper bound on a common name (RFC 5280 ub-common-name).
_CN_MAX = 64


def _leaf_name(name: str) -> x509.Name:
    """The subject of a leaf for `name`: its common name is only a label (names
    are checked against the subject alternative names), so a name longer than
    a common name may be (a valid 253-character id) is cut short, marked
    with ``...``."""
    if len(name) > _CN_MAX:
        name = name[:_CN_MAX - 3] + "..."
    return _name(name)


def _now() -> datetime.datetime:
    """The current time, timezone-aware UTC."""
    return datetime.datetime.now(datetime.UTC)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """A KeyUsage extension with only the given bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _server_client_eku() -> x509.ExtendedKeyUsage:
    """An ExtendedKeyUsage extension allowing TLS server and client auth."""
    return x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def _cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM encoding of a private key."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
