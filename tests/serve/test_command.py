"""The `omoe-serve` command: it imports neither torch nor fairseq, refuses bad arguments with a
message, and on 127.0.0.1 (bounded, self-stopping loops): answers 2,000 requests from 64
concurrent clients with none lost and flat memory, answers every accepted request after
SIGTERM and exits 0, and runs as two replicas on one port."""

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp
import psutil
import pytest

from omoe_plugin.serve.cli import cli_main
from tests.cli import exits_with
from tests.serve.conftest import CommandServer

REFUSED = "connection closed"  # what a client sees once the server stopped accepting


def test_the_server_imports_neither_torch_nor_fairseq():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c",
                             "import omoe_plugin.serve.cli, omoe_plugin.serve.app"],
                            capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if "|" in line}
    assert {"onnxruntime", "fastapi", "uvicorn", "prometheus_client"} <= imported
    assert not imported & {"torch", "fairseq", "hydra"}


def test_bad_arguments_are_refused_with_a_message(models, tmp_path):
    tiny = str(models["tiny"])
    assert "no model at" in exits_with(cli_main, [str(tmp_path / "missing.onnx")])
    assert "two models named 'tiny'" in exits_with(cli_main, [tiny, tiny, "--port", "0"])
    assert "model name 'a b'" in exits_with(cli_main, [f"a b={tiny}"])
    assert "--max-items must not exceed --max-queue" in exits_with(
        cli_main, [tiny, "--max-items", "9", "--max-queue", "8"])


def infer_body(text: str) -> bytes:
    return ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["%s"]}]}'
            % text).encode()


async def hammer(url: str, requests: int, clients: int, fresh_connections: bool = False,
                 stop_on_refusal: bool = False, limit_s: float = 120) -> list:
    """Send up to `requests` infer requests from `clients` concurrent clients (bounded in
    count and in time); each one's HTTP status, or REFUSED when the connection failed."""
    results: list = []
    sent = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            text = " ".join(f"w{(sent * 7 + k) % 40}" for k in range(1 + sent % 20))
            try:
                async with session.post(f"{url}/v2/models/tiny/infer", data=infer_body(text),
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    results.append(r.status)
            except aiohttp.ClientConnectionError:
                results.append(REFUSED)
                if stop_on_refusal:
                    return

    connector = aiohttp.TCPConnector(limit=clients, force_close=fresh_connections)
    async with asyncio.timeout(limit_s):
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))
    return results


@pytest.mark.slow
def test_2000_requests_from_64_clients_none_lost_and_memory_flat(models):
    server = CommandServer(f"tiny={models['tiny']}")
    try:
        warm_up = asyncio.run(hammer(server.url, 500, 64))
        rss_warm = psutil.Process(server.process.pid).memory_info().rss
        measured = asyncio.run(hammer(server.url, 1500, 64))
        rss_end = psutil.Process(server.process.pid).memory_info().rss
    finally:
        code, log = server.stop()
    results = warm_up + measured
    assert len(results) == 2000 and set(results) <= {200, 503, 429}, set(results)
    assert results.count(200) >= 1900  # 64 clients never fill the default queue
    assert rss_end <= 1.10 * rss_warm, (rss_warm, rss_end)
    assert code == 0 and server.answered() == (2000, 2000), log[-2000:]


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(models):
    server = CommandServer(f"tiny={models['tiny']}")

    async def load_then_sigterm() -> list:
        clients = asyncio.create_task(hammer(server.url, 20_000, 32, stop_on_refusal=True))
        await asyncio.sleep(2.0)  # well under load by now
        server.process.send_signal(signal.SIGTERM)
        return await clients
    try:
        results = asyncio.run(load_then_sigterm())
        started = time.monotonic()
        code = server.process.wait(60)
    finally:
        stopped, log = server.stop()
    answered, received = server.answered()
    assert code == 0 and time.monotonic() - started < 30, log[-2000:]
    assert set(results) == {200, REFUSED}  # no request failed with the server up
    assert results.count(200) == answered == received > 0, log[-2000:]


@pytest.mark.slow
def test_two_replicas_share_one_port(models):
    first = CommandServer(str(models["tiny"]), "--reuse-port")
    try:
        # the other ONNX Runtime thread setting: both answer alike
        second = CommandServer(str(models["tiny"]), "--reuse-port", "--spinning", "on",
                               port=first.port)
    except BaseException:
        first.stop()
        raise
    try:
        results = asyncio.run(hammer(first.url, 200, 16, fresh_connections=True))
    finally:
        (code_first, _), (code_second, _) = first.stop(), second.stop()
    assert results == [200] * 200 and code_first == code_second == 0
    counts = [first.answered()[0], second.answered()[0]]
    assert sum(counts) == 200 and min(counts) > 0, counts  # the kernel spreads connections
