"""Actor class and config factory for tests/test_pool.py: module level, so a
pool's child processes can import them (as ``tests.pool_actors``). The
Coordinator's port and CA come through the environment, which children
inherit."""

from __future__ import annotations

import os
from typing import Any

from conec_actors import Actor, ClientConfig

PORT_ENV = "CONEC_POOL_TEST_PORT"
CA_ENV = "CONEC_POOL_TEST_CA"


class Echo(Actor):
    """Answers an ask with who it is and what it got."""

    async def receive(self, sender: str, body: Any) -> Any:
        return {"id": self.id, "pid": os.getpid(), "body": body}


def echo_config(i: int) -> ClientConfig:
    # A short idle timeout: a killed instance's id is freed soon for its successor.
    return ClientConfig(f"echo-{i}", "localhost",
                        addr=("127.0.0.1", int(os.environ[PORT_ENV])),
                        ca=os.environ[CA_ENV].encode(), idle_timeout=2.0)


def broken_config(i: int) -> ClientConfig:
    """A factory that fails: every instance dies at once."""
    raise RuntimeError(f"no config for instance {i}")
