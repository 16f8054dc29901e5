"""Inference speed of a fine-tuned MoE classifier: PyTorch eager (fp32, and with its products
in bf16) vs ONNX Runtime fp32 vs ONNX Runtime int8 (omoe-export --int8), and the MoE against
the dense model it was upcycled from, fine-tuned, exported and served the same way. Each
engine is timed in its own process (ONNX Runtime's spinning threads distort timings taken
beside another engine), engines interleaved over several rounds, median of each round's
median; plus the test accuracy of every engine.

    python scripts/bench_inference.py [--checkpoint CKPT] [--dense-checkpoint CKPT]
                                      [--data DIR] [--threads 2]

Defaults: the checkpoints of `make demo` and of `make bench-inference`'s dense fine-tune, and
their data. PyTorch bf16 (torch_bf16) is the fp32 model under torch.autocast("cpu",
bfloat16): its matrix products in bf16, on the CPU's bf16 units where it has them
(AVX512-BF16, AMX), LayerNorm and softmax in fp32; ONNX Runtime has no bf16 matrix kernels on
x86 CPUs, so bf16 is measured in PyTorch. The run starts with the CPU (model, logical cores,
ISA flags) and its fp32 peak measured on the spot with the engines' threads; every shape
reports the GFLOP of one forward of each model (omoe_plugin.analysis.hardware says how they
are counted: attention included, the MoE's router and top-k experts) and each engine's rate
as a share of that peak (the int8 engines' too, though int8 dot products (VNNI) run several
times the fp32 rate, so their share can pass 1). The last line printed is one JSON object:
latency (ms), throughput (sentences/s), GFLOP/s and share of the peak per engine and shape,
GFLOP per forward, the speed-ups over PyTorch, MoE / dense latency, the accuracies, the CPU
and the peak.
"""

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omoe_plugin.analysis.hardware import cpu_description, encoder_flops, measured_fp32_peak
from omoe_plugin.export.runtime import session
from omoe_plugin.export.sentences import OMoEClassifier
from omoe_plugin.export.classifier import ExportedClassifier, load_classifier
from omoe_plugin.export.parity import sample_tokens

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHAPES = ((1, 64), (1, 128), (32, 128))
RUNTIMES = ("torch", "torch_bf16", "ort_fp32", "ort_int8")
TORCH_RUNTIMES = RUNTIMES[:2]  # run the checkpoint in PyTorch
ORT_RUNTIMES = RUNTIMES[2:]  # run its ONNX export
MODELS = ("moe", "dense")  # an engine is (model, runtime), named "runtime" or "dense_runtime"
ENGINES = [(model, runtime) for model in MODELS for runtime in RUNTIMES]


def engine_name(model: str, runtime: str) -> str:
    return runtime if model == "moe" else f"{model}_{runtime}"


def onnx_file(models: Path, model: str, runtime: str) -> Path:
    """Where the exported model of an ONNX Runtime engine ("ort_fp32", "ort_int8") is kept."""
    return models / f"{model}_{runtime[4:]}.onnx"


def time_engine(runtime: str, checkpoint: Path, model_file: Path, batch: int, seq: int,
                threads: int, repeats: int) -> float:
    """Median latency (ms) of one runtime on [batch, seq] tokens (model_file: the exported
    model, unused by the PyTorch runtimes); runs in a worker process."""
    model, info = load_classifier(checkpoint)
    tokens = sample_tokens(info, batch, seq, padded=False, seed=seq)
    if runtime in TORCH_RUNTIMES:
        torch.set_num_threads(threads)
        wrapper = ExportedClassifier(model).eval()
        inputs = torch.from_numpy(tokens)

        def step():
            with torch.inference_mode(), precision(runtime):
                wrapper(inputs)
    else:
        onnx_session = session(model_file, threads=threads)

        def step():
            onnx_session.run(["logits"], {"src_tokens": tokens})
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def precision(runtime: str):
    """The context a PyTorch runtime runs the model in: bf16 products for torch_bf16."""
    if runtime == "torch_bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_gflop(checkpoint: Path) -> dict[tuple[int, int], float]:
    """GFLOP of one forward of the checkpoint's served model at each shape in SHAPES."""
    model, info = load_classifier(checkpoint)
    classes = next(iter(model.classification_heads.values())).out_proj.out_features
    return {(batch, seq): encoder_flops(model.cfg, batch, seq, classes,
                                        per_token=info.tagging or info.span_qa) / 1e9
            for batch, seq in SHAPES}


def test_split(data: Path) -> tuple[list[str], list[str]]:
    """The raw test sentences and their labels."""
    return tuple((data / "raw" / f"test.{column}").read_text(encoding="utf-8").splitlines()
                 for column in ("text", "label"))


def accuracy(model: Path, data: Path, threads: int) -> float:
    """Test accuracy (%) of an exported model on the raw test sentences."""
    texts, labels = test_split(data)
    predictions = OMoEClassifier(model, threads=threads).predict(texts)
    return 100 * float(np.mean([p.label == y for p, y in zip(predictions, labels)]))


def torch_accuracy(checkpoint: Path, classifier: OMoEClassifier, data: Path,
                   runtime: str = "torch") -> float:
    """Test accuracy (%) of the PyTorch model (runtime: one of TORCH_RUNTIMES), fed the same
    tokens as the exported ones."""
    model, info = load_classifier(checkpoint)
    texts, labels = test_split(data)
    wrapper, correct = ExportedClassifier(model).eval(), 0
    for start in range(0, len(texts), 64):
        rows = [torch.tensor(classifier.encode(t)[0]) for t in texts[start:start + 64]]
        tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=info.pad)
        with torch.inference_mode(), precision(runtime):
            predicted = wrapper(tokens)[0].argmax(-1)
        correct += sum(info.labels[p] == y for p, y in zip(predicted, labels[start:start + 64]))
    return 100 * correct / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "runs/demo/checkpoints/checkpoint_best.pt")
    parser.add_argument("--dense-checkpoint", type=Path,
                        default=ROOT / "runs/demo_dense/checkpoints/checkpoint_best.pt",
                        help="the dense model the MoE was upcycled from, fine-tuned alike")
    parser.add_argument("--data", type=Path, default=ROOT / "data-bin/movie_reviews_minilm")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_inference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--rounds", type=int, default=3,
                        help="worker processes per engine and shape (median of their medians)")
    parser.add_argument("--worker", nargs=5, metavar=("RUNTIME", "CHECKPOINT", "MODEL", "BATCH",
                                                      "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        runtime, checkpoint, model_file, batch, seq = args.worker
        batch, seq = int(batch), int(seq)
        repeats = max(5, args.repeats // batch * 4) if batch > 1 else args.repeats
        print(time_engine(runtime, Path(checkpoint), Path(model_file), batch, seq, args.threads,
                          repeats))
        return

    cpu, cpu_line = cpu_description()
    peak = measured_fp32_peak(args.threads)
    print(cpu_line)
    print(f"fp32 peak measured now: {peak:.1f} GFLOP/s ({args.threads} threads, large square "
          "product)")
    checkpoints = {"moe": args.checkpoint, "dense": args.dense_checkpoint}
    for model, checkpoint in checkpoints.items():
        if not checkpoint.is_file():
            sys.exit(f"no {model} checkpoint at {checkpoint}: run `make demo` and `make "
                     "bench-inference` (which fine-tunes the dense model), or pass its path")
    gflop = {model: forward_gflop(checkpoint) for model, checkpoint in checkpoints.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    # exported again when older than its checkpoint or than any of the package's code
    newest_code = max(path.stat().st_mtime for path in (ROOT / "omoe_plugin").rglob("*.py"))
    for model, runtime in ENGINES:
        target = onnx_file(args.out, model, runtime)
        if runtime in TORCH_RUNTIMES or (target.exists() and target.stat().st_mtime > max(
                checkpoints[model].stat().st_mtime, newest_code)):
            continue
        subprocess.run([str(BIN / "omoe-export"), str(checkpoints[model]), "--out", str(target),
                        "--data", str(args.data), *(["--int8"] * (runtime == "ort_int8"))],
                       check=True)
    results = {}
    for batch, seq in SHAPES:
        row, rounds = {}, {engine: [] for engine in ENGINES}
        for _ in range(args.rounds):  # engines interleaved, so drifts in machine speed cancel
            for model, runtime in ENGINES:
                model_file = ("-" if runtime in TORCH_RUNTIMES
                              else onnx_file(args.out, model, runtime))
                worker = [sys.executable, __file__, "--worker", runtime, str(checkpoints[model]),
                          str(model_file), str(batch), str(seq),
                          "--threads", str(args.threads), "--repeats", str(args.repeats)]
                rounds[model, runtime].append(float(subprocess.run(
                    worker, check=True, capture_output=True, text=True).stdout.split()[-1]))
        for model in MODELS:
            row[f"{model}_gflop"] = round(gflop[model][batch, seq], 3)
        for (model, runtime), times in rounds.items():
            name, ms = engine_name(model, runtime), statistics.median(times)
            row[f"{name}_ms"] = round(ms, 2)
            row[f"{name}_per_s"] = round(1000 * batch / ms, 1)
            row[f"{name}_gflop_s"] = round(1000 * gflop[model][batch, seq] / ms, 1)
            row[f"{name}_peak_share"] = round(row[f"{name}_gflop_s"] / peak, 3)
        for runtime in RUNTIMES[1:]:
            row[f"{runtime}_speedup"] = round(row["torch_ms"] / row[f"{runtime}_ms"], 2)
        for runtime in RUNTIMES:  # the price of the experts, served alike
            row[f"{runtime}_moe_over_dense"] = round(row[f"{runtime}_ms"] /
                                                     row[f"dense_{runtime}_ms"], 2)
        results[f"b{batch}_s{seq}"] = row
    results["accuracy"] = {}
    for model, checkpoint in checkpoints.items():
        classifier = OMoEClassifier(onnx_file(args.out, model, "ort_fp32"), threads=args.threads)
        for runtime in TORCH_RUNTIMES:
            results["accuracy"][engine_name(model, runtime)] = round(
                torch_accuracy(checkpoint, classifier, args.data, runtime), 2)
        for runtime in ORT_RUNTIMES:
            results["accuracy"][engine_name(model, runtime)] = round(
                accuracy(onnx_file(args.out, model, runtime), args.data, args.threads), 2)
    labels = {"torch": "PyTorch", "torch_bf16": "PyTorch bf16", "ort_fp32": "ORT fp32",
              "ort_int8": "ORT int8"}
    print("| shape | PyTorch ms | " + " | ".join(f"{labels[r]} ms (x)" for r in RUNTIMES[1:])
          + " | MoE / dense: " + ", ".join(labels[r] for r in RUNTIMES) + " |")
    print("|---|" + "---|" * (len(RUNTIMES) + 1))
    for name, row in results.items():
        if name != "accuracy":
            cells = [f"{row[f'{r}_ms']} ({row[f'{r}_speedup']}x)" for r in RUNTIMES[1:]]
            print(f"| {name} | {row['torch_ms']} | " + " | ".join(cells) + " | "
                  + ", ".join(str(row[f"{r}_moe_over_dense"]) for r in RUNTIMES) + " |")
    names = [engine_name(*engine) for engine in ENGINES]
    for name, row in results.items():
        if name != "accuracy":
            print(f"{name}: GFLOP per forward: MoE {row['moe_gflop']}, dense {row['dense_gflop']}; "
                  "GFLOP/s (share of fp32 peak): " + ", ".join(
                      f"{e} {row[f'{e}_gflop_s']} ({row[f'{e}_peak_share']:.0%})" for e in names))
    print(f"test accuracy: {results['accuracy']}")
    results.update(cpu=cpu, threads=args.threads, fp32_peak_gflop_s=round(peak, 1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
