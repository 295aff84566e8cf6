"""The Coordinator side of conec-actors."""

from typing import TYPE_CHECKING, Any

from ..config import CoordConfig

if TYPE_CHECKING:
    from .coord import Coord

__all__ = ["Coord", "CoordConfig"]


def __getattr__(name: str) -> Any:
    # Lazy, so worker processes never import the QUIC stack.
    if name == "Coord":
        from .coord import Coord

        return Coord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


