"""A real Prometheus server scrapes the Coordinator's /metrics and answers
queries about it (Debian's `prometheus` package; `.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import coordinator, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="no prometheus binary (Debian package `prometheus`; .ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, query: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
    except (urllib.error.URLError, ConnectionError):
        return []  # not up yet
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.timeout(90)
async def test_prometheus_scrapes_the_endpoint(tmp_path: Path) -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        for c in ("alice", "bob", "carol"):
            await h.client(c)
        host, port = h.coord.metrics_address
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: conec\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{host}:{port}']\n")
        web = _free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{web}",
            f"--storage.tsdb.path={tmp_path / 'data'}", stdout=log, stderr=log)
        try:
            async def clients_seen() -> bool:
                result = await asyncio.to_thread(_query, web, "conec_clients")
                return bool(result) and result[0]["value"][1] == "3"

            await wait_for(clients_seen, timeout=60, interval=0.5)
            (up,) = await asyncio.to_thread(_query, web, 'up{job="conec"}')
            assert up["value"][1] == "1"
            workers = await asyncio.to_thread(_query, web, "conec_workers_up")
            assert {r["metric"]["kind"]: r["value"][1] for r in workers} == {
                "routing": "1", "broadcast": "1"}
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            log.close()
