"""The Client side of conec-actors."""

from .client import Client

__all__ = ["Client"]
