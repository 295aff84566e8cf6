"""QUIC/TLS configuration and peer-certificate checks shared by both sides."""

from __future__ import annotations

from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import verify_certificate
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import wire
from ._quic import CONNECTION_ID_LENGTH
from .errors import CertificateError

#: Bytes of a peer's that one connection holds at most, unconsumed: received
#: out of order or in order, parked or announced by a gap, on any of its
#: streams (`_quic.ConecQuicConnection` grants MAX_DATA as data is consumed).
#: Together with ~100 KiB of QUIC state and a few KiB per stream it keeps a
#: connection under the 8 MiB budget (DESIGN 3.1). A stalled stream holds at
#: most its window (`streams.STREAM_WINDOW`, 256 KiB), so 23 streams may stall
#: with full windows while a neighbour still gets a full window of its own;
#: covering all 128 streams (32 MiB) would break the budget.
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
        max_stream_data=stream_window,
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
    """Check a peer's certificate: with `ca_pem`, it must chain to that CA;
    without, it must be self-signed (its own trust anchor). Dates always, the
    name when given. Raises `CertificateError` with the reason."""
    if cert is None:
        raise CertificateError("the peer presented no certificate")
    if ca_pem is None:
        anchor = cert.public_bytes(serialization.Encoding.PEM)
        chain = []
    else:
        anchor = ca_pem
    try:
        verify_certificate(certificate=cert, chain=chain, server_name=name, cadata=anchor)
    except Exception as exc:  # aioquic raises alerts, service_identity its own
        what = "issued by the required CA" if ca_pem is not None else "self-signed"
        raise CertificateError(
            f"certificate refused (must be {what}"
            f"{' and valid for ' + repr(name) if name else ''}): {exc}") from None


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
