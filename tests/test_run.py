"""Tests for conec_actors._run and _oserror: the program top level shared by
the command line and the demo."""

from __future__ import annotations

import asyncio
import errno
import signal

import pytest

from conec_actors._oserror import describe_os_error
from conec_actors._run import loop_name, on_stop_signals, run, running_loop_name


@pytest.mark.timeout(10)
async def test_a_stop_signal_calls_back_while_inside() -> None:
    stopped = asyncio.Event()
    with on_stop_signals(stopped.set):
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(stopped.wait(), 5)
    # the handler is gone again: the loop no longer claims the signal
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


def test_run_returns_the_result_on_the_loop_it_names() -> None:
    async def which() -> str:
        return running_loop_name()

    assert run(which()) == loop_name()


def test_describe_os_error() -> None:
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")
    assert describe_os_error(exc) == "/x/y: No such file or directory"
    assert describe_os_error(OSError("address in use")) == "address in use"
    named = OSError(errno.EACCES, "cannot open /x/y", "/x/y")
    assert describe_os_error(named) == "cannot open /x/y"
