"""The commands a `Client`'s task takes from its queue, in order: each
carries the future its caller awaits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ..streams import StreamCore
    from .channels import Channel


def retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Open(NamedTuple):
    peer: str
    n: int | None
    purpose: str
    reply: asyncio.Future[tuple[StreamCore, asyncio.Future[None]]]
    kind: str = "proxied"


class OpenChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[Channel]


class CloseChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[None]


class FindChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[Channel]


class Close(NamedTuple):
    done: asyncio.Future[None]


Request = Open | OpenChannel | FindChannel | CloseChannel
Command = Request | Close
