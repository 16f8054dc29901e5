"""Serving speed of `omoe-serve` against ONNX Runtime called directly, on the demo model: (a)
throughput at 32 concurrent clients each sending one sentence per request, against offline
batched `predict` on the same sentences (target >= 0.8x); (b) latency at one client, p50 and
p99, against a direct `predict([sentence])`, tokenisation included (target <= 1.2x); (c)
10,000 requests from 64 clients: none lost (each 200, or an explicit 503 / 429), the
server's memory (RSS) flat within 10 % after warm-up.

    python scripts/bench_serve.py [--model runs/demo/model.onnx] [--threads N] [--quick]

The demo model is written by `make demo`. Sentences: the movie-review test split of
data-bin/movie_reviews_minilm (its WordPiece pieces joined back), else --sentences FILE (one
per line). The server runs as the `omoe-serve` command in its own process, on 127.0.0.1 only;
the clients are raw HTTP/1.1 keep-alive connections of this process (asyncio streams,
requests encoded beforehand), so that the client costs the shared cores as little as
possible. Take timings on an idle machine: the clients and the server share its cores. The
last line printed is one JSON object with every figure.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import psutil

from omoe_plugin.analysis.hardware import cpu_description
from omoe_plugin.export.inference import load_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = ROOT / "runs" / "demo" / "model.onnx"
TEST_SPLIT = ROOT / "data-bin" / "movie_reviews_minilm" / "raw" / "test.input0"
LISTENING = re.compile(r"serving .* on http://127\.0\.0\.1:(\d+)")


def sentences(path: Path | None, limit: int) -> list[str]:
    """The benchmark's sentences (at most `limit`)."""
    if path is None and TEST_SPLIT.is_file():
        lines = [line.replace(" ##", "") for line in TEST_SPLIT.read_text().splitlines()]
    elif path is not None:
        lines = path.read_text().splitlines()
    else:
        sys.exit(f"no sentences: {TEST_SPLIT} is missing (make demo); pass --sentences FILE")
    return [line for line in lines if line.strip()][:limit]


def offline(model_path: Path, texts: list[str], threads: int) -> dict:
    """Offline batched throughput (sentences/s, best of 3 passes; batches of 32 sentences in
    order, each sorted by length, as omoe-infer runs them) and direct per-sentence latency
    (ms, p50 and p99, tokenisation included)."""
    model = load_model(model_path, threads)
    model.predict(texts[:64], 32)
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for start in range(0, len(texts), 32):
            model.predict(texts[start:start + 32], 32)
        passes.append(time.perf_counter() - started)
    latencies = []
    for text in texts:
        started = time.perf_counter()
        model.predict([text], 1)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"throughput": len(texts) / min(passes), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def request_bytes(name: str, text: str) -> bytes:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "data": [text]}]}).encode()
    return (f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def one_client(port: int, requests: list[bytes], next_index, results: list) -> None:
    """Send requests (taken by index from the shared iterator) over one keep-alive
    connection; each one's (status, seconds), status 0 for a failed connection."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        results.append((0, 0.0))
        return
    try:
        for i in next_index:
            started = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
            except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                results.append((0, time.perf_counter() - started))
                return
            results.append((status, time.perf_counter() - started))
    finally:
        writer.close()


def load(port: int, requests: list[bytes], count: int, clients: int) -> tuple[list, float]:
    """`count` requests from `clients` concurrent connections: the results and wall time."""
    results: list = []
    index = iter(range(count))

    async def main() -> None:
        async with asyncio.timeout(600):
            await asyncio.gather(*(one_client(port, requests, index, results)
                                   for _ in range(clients)))
    started = time.perf_counter()
    asyncio.run(main())
    return results, time.perf_counter() - started


def start_server(model: Path, name: str, threads: int,
                 spinning: str) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen([str(BIN / "omoe-serve"), f"{name}={model}", "--port", "0",
                               "--threads", str(threads), "--spinning", spinning],
                              stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if found := LISTENING.search(line):
            return server, int(found.group(1))
    sys.exit("omoe-serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--sentences", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--requests", type=int, default=10_000, help="requests of part (c)")
    parser.add_argument("--spinning", choices=("off", "on"), default="on",
                        help="omoe-serve's --spinning")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 200 sentences, 1,000 requests in part (c)")
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model}: run `make demo` (it writes {DEMO}) or pass --model")
    texts = sentences(args.sentences, 200 if args.quick else 100_000)
    total = 1000 if args.quick else args.requests
    print(f"{cpu_description()[1]}; {args.threads} threads; ONNX Runtime "
          f"{onnxruntime.__version__}; load average {os.getloadavg()[0]:.2f} "
          "(take timings on an idle machine)", flush=True)
    direct = offline(args.model, texts, args.threads)
    print(f"direct: {direct['throughput']:.1f} sentences/s batched (32), one sentence "
          f"p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms", flush=True)
    server, port = start_server(args.model, "demo", args.threads, args.spinning)
    try:
        requests = [request_bytes("demo", text) for text in texts]
        load(port, requests, 64, 8)  # warm-up
        single, _ = load(port, requests, len(texts), 1)
        ms = [seconds * 1000 for _, seconds in single]
        latency = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        concurrent, wall = load(port, requests, len(texts), 32)
        throughput = len(concurrent) / wall
        process = psutil.Process(server.pid)
        first, _ = load(port, requests, total // 10, 64)
        rss_warm = process.memory_info().rss
        rest, soak_wall = load(port, requests, total - total // 10, 64)
        rss_end = process.memory_info().rss
    finally:
        server.terminate()
        code = server.wait(60)
    statuses = [status for status, _ in single + concurrent + first + rest]
    soak = [status for status, _ in first + rest]
    report = {
        "cpu": cpu_description()[0], "threads": args.threads, "spinning": args.spinning,
        "sentences": len(texts),
        "direct": direct,
        "throughput_32_clients": throughput, "throughput_ratio": throughput / direct["throughput"],
        "latency_1_client": latency,
        "latency_ratio_p50": latency["p50_ms"] / direct["p50_ms"],
        "latency_ratio_p99": latency["p99_ms"] / direct["p99_ms"],
        "soak": {"requests": len(soak), "clients": 64, "ok": soak.count(200),
                 "refused": sum(s in (503, 429) for s in soak),
                 "lost": sum(s not in (200, 503, 429) for s in soak),
                 "requests_per_s": len(rest) / soak_wall,
                 "rss_warm_mb": rss_warm / 2**20, "rss_end_mb": rss_end / 2**20,
                 "rss_growth": rss_end / rss_warm - 1},
        "all_requests": len(statuses), "server_exit": code,
    }
    print(f"(a) 32 clients: {throughput:.1f} requests/s = {report['throughput_ratio']:.2f}x "
          "offline batched (target >= 0.8x)")
    print(f"(b) 1 client: p50 {latency['p50_ms']:.2f} ms ({report['latency_ratio_p50']:.2f}x "
          f"direct), p99 {latency['p99_ms']:.2f} ms ({report['latency_ratio_p99']:.2f}x) "
          "(target <= 1.2x)")
    s = report["soak"]
    print(f"(c) {s['requests']} requests from 64 clients: {s['ok']} answered, {s['refused']} "
          f"refused (503/429), {s['lost']} lost; {s['requests_per_s']:.1f} requests/s; RSS "
          f"{s['rss_warm_mb']:.1f} -> {s['rss_end_mb']:.1f} MB ({s['rss_growth']:+.1%}); "
          f"server exit {code}")
    print(json.dumps(report))
    if s["lost"] or code != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
