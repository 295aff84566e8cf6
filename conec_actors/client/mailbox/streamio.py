"""Two stream helpers shared by the sending and receiving drivers."""

from __future__ import annotations

import logging

from ...errors import ProtocolError
from ...framing import frame
from ...streams import OutStream

log = logging.getLogger(__name__)


def write_idle(stream: OutStream, data: bytes) -> bool:
    """Write one frame now if `stream` is open and has nothing unsent (so the
    write neither waits for the high watermark nor overtakes anything);
    False, writing nothing, otherwise."""
    core = stream._core
    conn = core.conn
    if (core.send_error is not None or core.send_finished or conn.closed
            or conn.unsent(core.quic_id) or len(data) > core.max_message_size):
        return False
    core.write_raw(frame(data))
    return True


def log_failure(exc: Exception, where: str) -> None:
    """Log why a mailbox stream was failed: a warning for the peer's protocol
    error, an error with its traceback for a bug of ours."""
    if isinstance(exc, ProtocolError):
        log.warning("%s: %s", where, exc)
    else:  # a bug
        log.error("%s failed", where, exc_info=exc)
