"""What a connection's close code means to the client: one home for the rule.

Sans-I/O. A QUIC close carries a code (`wire.Code`, or a TLS alert as a
QUIC CRYPTO_ERROR) and a reason; `connection_error` turns them into the
exception the client raises, for the connection to the Coordinator and for
a direct channel alike. `refusal_error` does the same for the Coordinator's
refusal of a channel introduction.
"""

from __future__ import annotations

from . import wire
from .errors import (
    CertificateError,
    ClientClosed,
    ConecError,
    ConnectFailed,
    NoSuchPeer,
    StreamReset,
)

#: QUIC CRYPTO_ERROR codes: 0x100 + the TLS alert.
TLS_ALERTS = range(0x100, 0x200)


def connection_error(code: int, reason: str, *, channel: str | None = None) -> ConecError:
    """The error a closed connection means: to the Coordinator (`channel`
    None) or the direct channel to `channel` (how to name the peer, e.g.
    ``"'bob'"``). A code the table maps to a refusal gives that error; a TLS
    alert `CertificateError`; anything else (a normal close, a reset code,
    an unknown code) `ClientClosed` for the Coordinator, `ConnectFailed` for
    a channel."""
    said = reason or wire.describe(code)
    if code in TLS_ALERTS:
        with_whom = "" if channel is None else f" with {channel}"
        return CertificateError(f"TLS handshake{with_whom} failed: "
                                f"{reason or 'alert ' + str(code)}")
    if code in wire.CODES and code != wire.Code.NO_ERROR:
        err = wire.error_for(code, reason)
        if not isinstance(err, StreamReset):
            return err
    if channel is None:
        return ClientClosed(f"the connection to the Coordinator ended: {said}")
    return ConnectFailed(f"the channel to {channel} ended: {said}")


def refusal_error(peer: str, code: int, reason: str) -> ConecError:
    """The error for the Coordinator's refusal (`ChannelIntro.code`) to
    introduce us to `peer`."""
    err = wire.error_for(code, reason)
    if isinstance(err, StreamReset):  # not a refusal the table names: unreachable
        return ConnectFailed(f"cannot open a channel to {peer!r}: "
                             f"{reason or wire.describe(code)}")
    if isinstance(err, NoSuchPeer):
        return NoSuchPeer(f"no client {peer!r} is connected")
    return err
