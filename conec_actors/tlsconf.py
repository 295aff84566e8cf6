"""QUIC/TLS configuration and peer-certificate checks shared by both sides."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, TypeVar

import service_identity
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import wire
from ._quic import CONNECTION_ID_LENGTH, initial_stream_window
from .errors import CertificateError

#: Bytes of a peer's that one connection holds at most, unconsumed: received
#: out of order or in order, parked or announced by a gap, on any of its
#: streams (`_quic.ConecQuicConnection` grants MAX_DATA as data is consumed).
#: Together with ~100 KiB of QUIC state and a few KiB per stream it keeps a
#: connection under the 8 MiB budget (DESIGN 3.1). Full windows for all 128
#: streams (`streams.STREAM_WINDOW`, 256 KiB: 32 MiB) would break the budget,
#: so streams start with 12 KiB (`_quic.initial_stream_window`) and grow out
#: of a budget they share (`_quic.ConecQuicConnection`): however many stall,
#: the connection's credit outlasts theirs and its other streams keep flowing.
CONNECTION_WINDOW = 6 * 1024 * 1024


def load_cert_key(cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate,
                                                            list[x509.Certificate], Any]:
    """Parse a PEM certificate (chain) and key; `CertificateError` if unusable."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise CertificateError(f"cannot load certificate or key: {exc}") from None
    if not certs:
        raise CertificateError("no certificate found in the PEM data")
    return certs[0], certs[1:], key


def quic_configuration(*, is_client: bool, cert_pem: bytes, key_pem: bytes,
                       idle_timeout: float, max_datagram_size: int, stream_window: int,
                       server_name: str | None = None,
                       cadata: bytes | None = None) -> QuicConfiguration:
    cert, chain, key = load_cert_key(cert_pem, key_pem)
    cfg = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[wire.ALPN],
        connection_id_length=CONNECTION_ID_LENGTH,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_stream_data=initial_stream_window(CONNECTION_WINDOW, stream_window),
        max_data=CONNECTION_WINDOW,
        server_name=server_name,
        cadata=cadata,
    )
    cfg.certificate = cert
    cfg.certificate_chain = chain
    cfg.private_key = key
    return cfg


def check_chain(cert: x509.Certificate | None, chain: list[x509.Certificate],
                ca_pem: bytes | None, name: str | None = None) -> None:
    """Check a peer's certificate, the one rule for the Coordinator's admission
    and for direct channels. Raises `CertificateError` with the reason.

    Without `ca_pem` the certificate must be self-signed: its own signature
    verifies with its own key. With `ca_pem` it must be a leaf issued directly
    by one of the CA certificates in it: not a CA, `digitalSignature` if it has
    a keyUsage, `clientAuth` if it has an extendedKeyUsage. A presented
    `chain` is never used, so an intermediate CA a peer brings along admits
    nothing (configure that intermediate as the CA instead). Dates always
    (the certificate's and its CA's), the name when given.
    """
    del chain  # deliberately unused: see above
    if cert is None:
        raise CertificateError("the peer presented no certificate")
    what = "issued by the required CA" if ca_pem is not None else "self-signed"
    try:
        exts = _extensions(cert, "its")
        if ca_pem is None:
            _check_signed_by(cert, cert)
        else:
            _check_leaf(exts)
            _check_issued_by(cert, ca_pem)
        _check_dates(cert, "the certificate")
        if name is not None:
            _check_name(cert, name, exts)
    except _Refused as exc:
        raise CertificateError(
            f"certificate refused (must be {what}"
            f"{' and valid for ' + repr(name) if name else ''}): {exc}") from None


class _Refused(Exception):
    """A reason to refuse a certificate (becomes a `CertificateError`)."""


def _extensions(cert: x509.Certificate, whose: str) -> x509.Extensions:
    """`cert`'s extensions, parsed (cryptography parses them lazily); a
    critical one nobody here understands refuses the certificate, as TLS
    libraries do."""
    try:
        exts = cert.extensions
    except ValueError as exc:
        raise _Refused(f"{whose} extensions cannot be parsed: {exc}") from None
    for ext in exts:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise _Refused(f"{whose} critical extension {ext.oid.dotted_string} is unknown")
    return exts


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(exts: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return exts.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_leaf(exts: x509.Extensions) -> None:
    """A client certificate may be used for TLS client authentication and
    cannot sign certificates."""
    basic = _extension(exts, x509.BasicConstraints)
    usage = _extension(exts, x509.KeyUsage)
    eku = _extension(exts, x509.ExtendedKeyUsage)
    if basic is not None and basic.ca:
        raise _Refused("it is a CA certificate (basicConstraints CA:TRUE), "
                       "not a leaf")
    if usage is not None and not usage.digital_signature:
        raise _Refused("its keyUsage does not allow digitalSignature")
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise _Refused("its extendedKeyUsage does not allow clientAuth")


def _check_issued_by(cert: x509.Certificate, ca_pem: bytes) -> None:
    """`cert` is signed by a certificate in `ca_pem` that may sign
    certificates and is valid now."""
    try:
        cas = [ca for ca in x509.load_pem_x509_certificates(ca_pem)
               if ca.subject == cert.issuer]
    except ValueError as exc:
        raise _Refused(f"the CA certificate cannot be loaded: {exc}") from None
    if not cas:
        raise _Refused(f"it is not issued directly by the CA (its issuer is "
                       f"{cert.issuer.rfc4514_string()!r}; certificates from an "
                       "intermediate CA are admitted only with that intermediate as "
                       "the CA)")
    for ca in cas:  # several CAs of one name: the one whose key signed it
        try:
            _check_signed_by(cert, ca)
            break
        except _Refused:
            if ca is cas[-1]:
                raise
    exts = _extensions(ca, "its CA's")
    basic = _extension(exts, x509.BasicConstraints)
    usage = _extension(exts, x509.KeyUsage)
    if (basic is not None and not basic.ca) or (usage is not None
                                                and not usage.key_cert_sign):
        raise _Refused("the configured CA certificate may not sign certificates "
                       "(basicConstraints CA:FALSE or no keyCertSign)")
    _check_dates(ca, "its CA's certificate")


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise _Refused("its signature does not verify") from None
    except (ValueError, TypeError) as exc:  # names differ, unsupported algorithm
        raise _Refused(f"it is not signed by its issuer: {exc}") from None


def _check_dates(cert: x509.Certificate, what: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise _Refused(f"{what} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise _Refused(f"{what} is no longer valid")


def _check_name(cert: x509.Certificate, name: str, exts: x509.Extensions) -> None:
    """`name` among the subject alternative names (as TLS checks a host name)."""
    try:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            service_identity.cryptography.verify_certificate_hostname(cert, name)
        else:
            service_identity.cryptography.verify_certificate_ip_address(cert, name)
    except ValueError as exc:
        raise _Refused(f"its extensions cannot be parsed: {exc}") from None
    except (service_identity.CertificateError, service_identity.VerificationError):
        san = _extension(exts, x509.SubjectAlternativeName)
        names = ", ".join(repr(str(n.value)) for n in san or [])
        raise _Refused(f"it is valid only for {names or 'no name'}") from None


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
