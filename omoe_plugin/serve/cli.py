"""`omoe-serve MODEL.onnx [NAME=MODEL.onnx ...]`: serve omoe-export models over HTTP (the Open
Inference Protocol and a plain JSON form) with uvicorn, one process, one ONNX Runtime session
per model. SIGTERM (or Ctrl-C) stops it gracefully: the port closes, every request already
accepted is answered, and it exits 0."""

import argparse
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import uvicorn
from prometheus_client import disable_created_metrics

from ..export.inference import at_least, load_model, quiet_logging, serving_parser
from ..export.runtime import SERVERS, ServedModel
from .app import Settings, create_app
from .spec import ModelSpec

logger = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_.-]+")
BACKLOG = 2048  # connections the kernel holds until accepted (uvicorn's default)


def model_paths(given: list[str]) -> dict[str, Path]:
    """Model name -> file, from PATH (named by its stem) or NAME=PATH arguments."""
    paths: dict[str, Path] = {}
    for arg in given:
        name, sep, path = arg.partition("=")
        name, path = (name, path) if sep else (Path(arg).stem, arg)
        if not NAME.fullmatch(name):
            raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-' "
                             "(NAME=PATH names a model)")
        if name in paths:
            raise ValueError(f"two models named {name!r}: name one NAME=PATH")
        paths[name] = Path(path)
    return paths


def open_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket (listening already: connections made while the models load or
    the server starts wait in the backlog); with reuse_port, several omoe-serve processes
    share the port and the kernel spreads connections over them (SO_REUSEPORT, Linux)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it a keep-alive response waits 40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def seconds(text: str) -> float:
    """An argparse type: a number of seconds or milliseconds, >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = serving_parser(
        "omoe-serve", "Serve omoe-export ONNX models (classifiers, taggers, readers) over HTTP: "
        "the Open Inference Protocol (KServe v2: /v2/models/NAME/infer, metadata, health) and "
        "POST /models/NAME/predict {\"inputs\": [...]}, with dynamic micro-batching, a bounded "
        "queue, Prometheus /metrics and graceful shutdown on SIGTERM.",
        None, "ONNX Runtime graph optimisation level (default: the one stored at export)")
    p.add_argument("models", nargs="+", metavar="[NAME=]MODEL.onnx",
                   help="models to serve, each named by its file stem or NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=at_least(0), default=8000, help="port (0: any free one)")
    p.add_argument("--reuse-port", action="store_true",
                   help="SO_REUSEPORT: several omoe-serve processes share --port (replicas)")
    p.add_argument("--threads", type=at_least(0), default=0,
                   help="ONNX Runtime intra-op threads per model (0: the cores this process "
                   "may use)")
    p.add_argument("--spinning", choices=("off", "on"), default="on",
                   help="ONNX Runtime's intra-op threads spin between runs (on: ONNX Runtime's "
                   "default, the faster on cores the server has to itself) or sleep (off: for "
                   "a server sharing its cores with other busy processes)")
    p.add_argument("--max-batch-size", type=at_least(1), default=32,
                   help="most items in one ONNX Runtime run")
    p.add_argument("--max-batch-delay-ms", type=seconds, default=5.0,
                   help="longest wait for a fuller batch after a request arrives, only "
                   "while other requests are on their way in (0: never wait)")
    p.add_argument("--max-queue", type=at_least(1), default=1024,
                   help="items waiting for a batch; past it requests get 503 + Retry-After")
    p.add_argument("--max-items", type=at_least(1), default=256,
                   help="items in one request; more: 413")
    p.add_argument("--max-request-bytes", type=at_least(1), default=1 << 20,
                   help="request body size; larger: 413 (default 1 MiB)")
    p.add_argument("--request-timeout-s", type=seconds, default=30.0,
                   help="time from a request's arrival to its answer; past it: 504")
    p.add_argument("--max-chars", type=at_least(1), default=20_000,
                   help="characters kept of each text (as omoe-infer); a longer one is cut and "
                   "its record says so in \"note\"")
    return p


def load(paths: dict[str, Path], threads: int, level: Optional[str], max_chars: int,
         spinning: bool) -> dict[str, ServedModel]:
    """Every model, on its session, warmed up with one item."""
    models = {}
    for name, path in paths.items():
        model = load_model(path, threads, level, spinning)
        model.predict([ModelSpec(name, model, max_chars).example()])
        models[name] = model
    return models


def cli_main(argv: Optional[list[str]] = None) -> None:
    args = parser().parse_args(argv)
    quiet_logging()
    disable_created_metrics()  # no *_created series beside every counter and histogram
    if args.max_items > args.max_queue:
        sys.exit("omoe-serve: --max-items must not exceed --max-queue")
    threads = args.threads or len(os.sched_getaffinity(0))
    try:
        models = load(model_paths(args.models), threads, args.optimization_level, args.max_chars,
                      args.spinning == "on")
        sock = open_socket(args.host, args.port, args.reuse_port)
    except (ValueError, OSError) as e:
        sys.exit(f"omoe-serve: {e}")
    settings = Settings(**{field.name: getattr(args, field.name) for field in fields(Settings)})
    config = uvicorn.Config(create_app(models, settings), log_level="warning", access_log=False,
                            lifespan="on", timeout_keep_alive=5, backlog=BACKLOG)
    host, port = sock.getsockname()[:2]
    served = ", ".join(f"{n} ({SERVERS[m.info.kind][1]})" for n, m in models.items())
    logger.info(f"omoe-serve: serving {served} on http://{host}:{port} (pid {os.getpid()}, "
                f"{threads} ONNX Runtime threads per model)")
    # uvicorn shuts down gracefully on SIGTERM / SIGINT and then raises the signal again
    # with the handlers it found: no-op handlers let the process exit 0 after that.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
