"""One line for an `OSError`, as the command line and the demo print it."""

from __future__ import annotations


def describe_os_error(exc: OSError) -> str:
    """One line for an `OSError`: its file name (unless the message already
    names it) and its message, without the ``[Errno N]`` prefix."""
    text = exc.strerror or str(exc)
    name = exc.filename
    if name is not None and str(name) not in text:
        return f"{name}: {text}"
    return text
