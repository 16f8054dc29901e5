"""Inference speed of a fine-tuned MoE classifier: PyTorch eager vs ONNX Runtime fp32 vs ONNX
Runtime int8 (omoe-export --int8), each timed in its own process (ONNX Runtime's spinning
threads distort timings taken beside another engine), engines interleaved over several
rounds, median of each round's median; plus test accuracy of the three.

    python scripts/bench_inference.py [--checkpoint CKPT] [--data DIR] [--threads 2]

Defaults: `make demo`'s checkpoint and data. The last line printed is one JSON object:
latency (ms) and throughput (sentences/s) per engine and shape, the speed-ups over PyTorch,
and the accuracies.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omoe_plugin.export.inference import OMoEClassifier, session
from omoe_plugin.export.classifier import ExportedClassifier, load_classifier
from omoe_plugin.export.parity import sample_tokens

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHAPES = ((1, 64), (1, 128), (32, 128))
ENGINES = ("torch", "ort_fp32", "ort_int8")


def time_engine(engine: str, checkpoint: Path, models: Path, batch: int, seq: int,
                threads: int, repeats: int) -> float:
    """Median latency (ms) of one engine on [batch, seq] tokens; runs in a worker process."""
    model, info = load_classifier(checkpoint)
    tokens = sample_tokens(info, batch, seq, padded=False, seed=seq)
    if engine == "torch":
        torch.set_num_threads(threads)
        wrapper = ExportedClassifier(model).eval()
        inputs = torch.from_numpy(tokens)

        def step():
            with torch.inference_mode():
                wrapper(inputs)
    else:
        onnx_session = session(models / f"{engine[4:]}.onnx", threads=threads)

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


def test_split(data: Path) -> tuple[list[str], list[str]]:
    """The raw test sentences and their labels."""
    return tuple((data / "raw" / f"test.{column}").read_text(encoding="utf-8").splitlines()
                 for column in ("text", "label"))


def accuracy(model: Path, data: Path, threads: int) -> float:
    """Test accuracy (%) of an exported model on the raw test sentences."""
    texts, labels = test_split(data)
    predictions = OMoEClassifier(model, threads=threads).predict(texts)
    return 100 * float(np.mean([p.label == y for p, y in zip(predictions, labels)]))


def torch_accuracy(checkpoint: Path, classifier: OMoEClassifier, data: Path) -> float:
    """Test accuracy (%) of the PyTorch model, fed the same tokens as the exported ones."""
    model, info = load_classifier(checkpoint)
    texts, labels = test_split(data)
    wrapper, correct = ExportedClassifier(model).eval(), 0
    for start in range(0, len(texts), 64):
        rows = [torch.tensor(classifier.encode(t)[0]) for t in texts[start:start + 64]]
        tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=info.pad)
        with torch.inference_mode():
            predicted = wrapper(tokens)[0].argmax(-1)
        correct += sum(info.labels[p] == y for p, y in zip(predicted, labels[start:start + 64]))
    return 100 * correct / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "runs/demo/checkpoints/checkpoint_best.pt")
    parser.add_argument("--data", type=Path, default=ROOT / "data-bin/movie_reviews_minilm")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_inference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--rounds", type=int, default=3,
                        help="worker processes per engine and shape (median of their medians)")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "BATCH", "SEQ"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, batch, seq = args.worker[0], int(args.worker[1]), int(args.worker[2])
        repeats = max(5, args.repeats // batch * 4) if batch > 1 else args.repeats
        print(time_engine(engine, args.checkpoint, args.out, batch, seq, args.threads, repeats))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    for name, extra in (("fp32", []), ("int8", ["--int8"])):
        target = args.out / f"{name}.onnx"
        if not target.exists() or target.stat().st_mtime < args.checkpoint.stat().st_mtime:
            subprocess.run([str(BIN / "omoe-export"), str(args.checkpoint), "--out", str(target),
                            "--data", str(args.data), *extra], check=True)
    results = {}
    for batch, seq in SHAPES:
        row, rounds = {}, {engine: [] for engine in ENGINES}
        for _ in range(args.rounds):  # engines interleaved, so drifts in machine speed cancel
            for engine in ENGINES:
                worker = [sys.executable, __file__, "--worker", engine, str(batch), str(seq),
                          "--checkpoint", str(args.checkpoint), "--out", str(args.out),
                          "--threads", str(args.threads), "--repeats", str(args.repeats)]
                rounds[engine].append(float(subprocess.run(
                    worker, check=True, capture_output=True, text=True).stdout.split()[-1]))
        for engine in ENGINES:
            ms = statistics.median(rounds[engine])
            row[f"{engine}_ms"] = round(ms, 2)
            row[f"{engine}_per_s"] = round(1000 * batch / ms, 1)
        for engine in ENGINES[1:]:
            row[f"{engine}_speedup"] = round(row["torch_ms"] / row[f"{engine}_ms"], 2)
        results[f"b{batch}_s{seq}"] = row
    classifier = OMoEClassifier(args.out / "fp32.onnx", threads=args.threads)
    results["accuracy"] = {
        "torch": round(torch_accuracy(args.checkpoint, classifier, args.data), 2),
        "ort_fp32": round(accuracy(args.out / "fp32.onnx", args.data, args.threads), 2),
        "ort_int8": round(accuracy(args.out / "int8.onnx", args.data, args.threads), 2),
    }
    print("| shape | PyTorch ms | ORT fp32 ms (x) | ORT int8 ms (x) |")
    print("|---|---|---|---|")
    for name, row in results.items():
        if name != "accuracy":
            print(f"| {name} | {row['torch_ms']} | {row['ort_fp32_ms']} "
                  f"({row['ort_fp32_speedup']}x) | {row['ort_int8_ms']} "
                  f"({row['ort_int8_speedup']}x) |")
    print(f"test accuracy: {results['accuracy']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
