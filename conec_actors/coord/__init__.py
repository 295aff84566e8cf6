"""The Coordinator side of conec-actors."""

from ..config import CoordConfig
from .coord import Coord

__all__ = ["Coord", "CoordConfig"]
