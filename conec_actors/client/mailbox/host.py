"""What the mailbox needs from the client that hosts it.

The mailbox sees its client only through `MailboxHost` (the client
package implements it), so neither module imports the other's internals and the
import graph runs one way: client -> mailbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...errors import ClientClosed
    from ...streams import IncomingStream, InStream, OutStream


class MailboxHost(Protocol):
    """The client's side of the mailbox: paths to peers and its own state."""

    @property
    def max_message_size(self) -> int:
        """The message size limit toward the Coordinator."""
        ...

    def closed_error(self) -> ClientClosed:
        """A fresh `ClientClosed` saying why the client closed."""
        ...

    def has_channel(self, peer: str) -> bool:
        """A direct channel to `peer` is open."""
        ...

    async def open_route(self, peer: str, purpose: str, *, direct: bool,
                         reopen: bool = False) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` whose header says `purpose`: over the
        channel (`NoChannel` if there is none) or through the Coordinator
        (`reopen`: a route to `peer` had opened before, so a client that
        reconnects may wait for the peer to come back)."""
        ...

    def handle_purpose(self, purpose: str,
                       handler: Callable[[IncomingStream], bool] | None) -> None:
        """Give incoming streams whose header says `purpose` to `handler`
        (False from it refuses the stream); None stops."""
        ...
