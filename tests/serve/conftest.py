"""Tiny exported models of every served kind (a classifier, a sentence-pair classifier, a
tagger and a reader), and omoe-serve on 127.0.0.1: in this process (a uvicorn thread, for
the protocol tests) or as the real command (for shutdown, load and replicas)."""

import re
import subprocess
import threading
import time
from pathlib import Path

import onnx
import pytest
import uvicorn

from omoe_plugin.export.classifier import serving_info
from omoe_plugin.export.onnx_export import export_onnx
from omoe_plugin.export.serving_info import ServingInfo
from omoe_plugin.models.omoe_roberta import TOKEN_HEAD
from omoe_plugin.serve.cli import open_socket
from tests.cli import BIN
from tests.conftest import once_per_run, tiny_model, word_tokenizer

TAGS = ["B-PER", "O"]  # two tags: the same graph serves as the reader (start, end logits)


def relabelled(source: Path, out: Path, **changes) -> Path:
    """A copy of an exported model whose serving metadata says `changes` (the same graph
    served as another kind: a pair classifier, a reader)."""
    model = onnx.load(str(source))
    info = ServingInfo.read(source)
    for field, value in changes.items():
        setattr(info, field, value)
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="session")
def models(task, tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    """name -> file: "tiny" (classifier), "pairs", "ner" (tagger), "qa" (reader). Exported
    once for the whole run (once_per_run)."""
    def make(out: Path) -> None:
        tagger = tiny_model(task, max_positions=128)
        tagger.register_token_head(TOKEN_HEAD, num_tags=len(TAGS))
        info = serving_info(tagger.cfg, task.source_dictionary, TAGS,
                            word_tokenizer(task.source_dictionary.symbols), tagging=True)
        export_onnx(tagger.eval(), info, out / "ner.onnx", head=TOKEN_HEAD)
        relabelled(tiny_onnx, out / "pairs.onnx", pairs=True)
        relabelled(out / "ner.onnx", out / "qa.onnx", tagging=False, span_qa=True, pairs=True,
                   labels=["start", "end"], max_answer_tokens=5)

    out = once_per_run(tmp_path_factory, "served", make)
    return {"tiny": tiny_onnx, **{name: out / f"{name}.onnx" for name in ("pairs", "ner", "qa")}}


class ThreadServer:
    """An omoe-serve application served by uvicorn on a thread of this process, on a free
    port of 127.0.0.1."""

    def __init__(self, app) -> None:
        sock = open_socket("127.0.0.1", 0, False)
        self.port = sock.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no server"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class CommandServer:
    """`omoe-serve` as a subprocess on a free port of 127.0.0.1 (the port read from the line
    it logs once it listens)."""

    LISTENING = re.compile(r"serving .* on http://127\.0\.0\.1:(\d+) \(pid (\d+)")

    def __init__(self, *args: str, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "omoe-serve"), *args, "--port", str(port), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        for line in self.process.stderr:
            self.log.append(line)
            if found := self.LISTENING.search(line):
                self.port = int(found.group(1))
                return
        raise AssertionError("omoe-serve did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM; its exit status and everything it logged."""
        self.process.terminate()
        try:
            code = self.process.wait(timeout)
        finally:
            self.process.kill()
        self.log.append(self.process.stderr.read())
        self.process.stderr.close()
        return code, "".join(self.log)

    def answered(self) -> tuple[int, int]:
        """(answered, received) inference requests, from its shutdown line (after stop)."""
        found = re.search(r"answered (\d+) of (\d+) inference requests", "".join(self.log))
        assert found, "".join(self.log)[-2000:]
        return int(found.group(1)), int(found.group(2))
