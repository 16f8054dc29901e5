"""The serving-only install: `pip install omoe-plugin` in a fresh virtualenv brings ONNX Runtime,
the tokenizers, numpy and omoe-serve's HTTP stack, no torch and no fairseq, and serves an
exported model with `omoe-infer`, `load_model` and omoe-serve's app."""

import json
import subprocess
import venv
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.install
def test_a_fresh_virtualenv_serves_without_torch_or_fairseq(tiny_onnx, tmp_path):
    env = tmp_path / "serve-env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"],
                               capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"onnxruntime", "tokenizers", "numpy"} <= names
    assert not names & {"torch", "fairseq-fixed", "fairseq", "hydra-core"}
    infer = subprocess.run([str(env / "bin" / "omoe-infer"), str(tiny_onnx)],
                           input="w1 w2 w3\nw4\n", capture_output=True, text=True)
    assert infer.returncode == 0, infer.stderr[-2000:]
    records = [json.loads(line) for line in infer.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2] and all(r["label"] in ("neg", "pos")
                                                          for r in records)
    api = subprocess.run([str(python), "-c", (
        "import sys; from omoe_plugin.export import load_model; "
        "from omoe_plugin.serve.app import create_app; "
        f"m = load_model({str(tiny_onnx)!r}); print(m.predict(['w1'])[0].label); "
        "create_app({'tiny': m}); "
        "print('torch' in sys.modules, 'fairseq' in sys.modules)")],
        capture_output=True, text=True)
    assert api.returncode == 0, api.stderr[-2000:]
    assert api.stdout.split()[1:] == ["False", "False"]  # omoe-serve's app built, no torch
