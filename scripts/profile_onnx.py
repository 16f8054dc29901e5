"""Where an exported model's time goes in ONNX Runtime: the share of each operator type in a
forward pass (ONNX Runtime's own profiler, the serving session's settings), and, with
--attention, what ONNX Runtime's CPU attention kernels make of the model's attention core.

    python scripts/profile_onnx.py MODEL.onnx [--batch 32] [--seq 128] [--threads 2]
                                  [--runs 10] [--attention]

--attention times, on random [batch, seq, d] inputs of the model's attention shape (d and
heads read from its first Attention or QAttention node), interleaved, median of --runs:
the Attention operator the exporter fuses to (with the padding mask it is always given), the
same without the mask, its Q/K/V product alone (so the difference is the attention core:
scores, softmax, context), and MultiHeadAttention on split Q/K/V without a mask: the one
path that reaches ONNX Runtime's flash-attention kernel (MLAS) on CPU, which it takes only
without a padding mask or bias. The core's GFLOP/s is reported against the fp32 peak
measured on the spot.
"""

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from omoe_plugin.analysis.hardware import cpu_description, measured_fp32_peak
from omoe_plugin.export.runtime import DISABLED_FUSIONS, session


def operator_shares(model: Path, batch: int, seq: int, threads: int, runs: int) -> dict:
    """Milliseconds per forward of each operator type, most first (kernel time only)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_FUSIONS)
    tokens = np.random.default_rng(0).integers(5, 1000, size=(batch, seq), dtype=np.int64)
    feed = {sess.get_inputs()[0].name: tokens}
    for _ in range(2):
        sess.run(None, feed)
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    wall = (time.perf_counter() - start) / runs * 1e3
    times = collections.Counter()
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                        if e.get("name") == "model_run")
    warmed = model_runs[1][1]  # the end of the two warm-up runs
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] >= warmed):
            times[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return {"wall_ms": wall, "ops": dict(times.most_common())}


def attention_shape(model: Path) -> tuple[int, int]:
    """(d, heads) of the model's first Attention or QAttention node."""
    graph = onnx.load(str(model), load_external_data=False).graph
    for node in graph.node:
        if node.op_type in ("Attention", "QAttention"):
            heads = next(a.i for a in node.attribute if a.name == "num_heads")
            weight = next(i for i in graph.initializer if i.name == node.input[1])
            return weight.dims[0], heads
    raise SystemExit(f"{model}: no Attention or QAttention node (exported with --no-fuse?)")


def attention_kernels(d: int, heads: int, batch: int, seq: int, threads: int,
                      runs: int) -> dict:
    """Median ms of each attention variant (see the module's docstring)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((d, 3 * d), np.float32) * 0.05, "W")
    bias = numpy_helper.from_array(np.zeros(3 * d, np.float32), "b")
    splits = numpy_helper.from_array(np.array([d, d, d], np.int64), "splits")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, d])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT32, [batch, seq])
    ms = "com.microsoft"
    graphs = {
        "attention": ([helper.make_node("Attention", ["x", "W", "b", "mask"], ["y"], domain=ms,
                                        num_heads=heads)], [x, mask]),
        "attention_no_mask": ([helper.make_node("Attention", ["x", "W", "b"], ["y"], domain=ms,
                                                num_heads=heads)], [x]),
        "qkv_product": ([helper.make_node("MatMul", ["x", "W"], ["y"])], [x]),
        "mha_flash_no_mask": ([
            helper.make_node("MatMul", ["x", "W"], ["qkv"]),
            helper.make_node("Split", ["qkv", "splits"], ["q", "k", "v"], axis=2),
            helper.make_node("MultiHeadAttention", ["q", "k", "v", "b"], ["y"], domain=ms,
                             num_heads=heads)], [x]),
    }
    feeds = {"x": rng.standard_normal((batch, seq, d), np.float32),
             "mask": np.ones((batch, seq), np.int32)}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (nodes, inputs) in graphs.items():
            used = {i for n in nodes for i in n.input}
            graph = helper.make_graph(
                nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                [t for t in (weight, bias, splits) if t.name in used])
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[
                helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]), str(path))
            sess = session(path, threads)
            sessions[name] = (sess, {i.name: feeds[i.name] for i in sess.get_inputs()})
        times = {name: [] for name in sessions}
        for _ in range(2 + runs):  # interleaved; the first two rounds warm up
            for name, (sess, feed) in sessions.items():
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[2:]) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--attention", action="store_true")
    args = parser.parse_args()
    print(cpu_description()[1])
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {args.batch} x {args.seq}")
    shares = operator_shares(args.model, args.batch, args.seq, args.threads, args.runs)
    total = sum(shares["ops"].values())
    print(f"{args.model}: {shares['wall_ms']:.2f} ms a forward, {total:.2f} ms in kernels")
    for op, ms in list(shares["ops"].items())[:15]:
        print(f"  {op:28s} {ms:8.2f} ms  {ms / total:6.1%}")
    result = {"model": str(args.model), **shares}
    if args.attention:
        d, heads = attention_shape(args.model)
        peak = measured_fp32_peak(args.threads)
        kernels = attention_kernels(d, heads, args.batch, args.seq, args.threads, args.runs)
        core_gflop = 2 * 2 * args.batch * args.seq * args.seq * d / 1e9  # Q K^T and A V
        core_ms = kernels["attention"] - kernels["qkv_product"]
        print(f"attention of one layer (d {d}, {heads} heads), fp32 peak measured now "
              f"{peak:.1f} GFLOP/s:")
        for name, ms in kernels.items():
            print(f"  {name:20s} {ms:8.2f} ms")
        print(f"  attention core (attention - qkv_product): {core_ms:.2f} ms, "
              f"{core_gflop / core_ms * 1e3:.1f} GFLOP/s = "
              f"{core_gflop / core_ms * 1e3 / peak:.0%} of peak; flash / fused: "
              f"{kernels['mha_flash_no_mask'] / kernels['attention']:.2f}")
        result.update(attention=kernels, attention_core_ms=core_ms, fp32_peak_gflop_s=peak)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
