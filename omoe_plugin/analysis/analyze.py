"""`omoe-analyze CHECKPOINT --data DIR`: expert similarity of every MoE layer of a checkpoint
on held-out sentences, as a table, PNG heat maps, TensorBoard images and JSON.

Every expert of a layer is applied to the same tokens (the layer's real inputs on the
split's first sentences) and every pair of experts is compared by linear CKA and by the
mean cosine of their outputs: the paper's homogeneous-representation measure.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from ..convert.checkpoint import load_encoder_checkpoint
from ..data.binarised import leading_sentences
from ..models.encoder import load_encoder
from .similarity import (
    displaced,
    displacement_similarity,
    displacements,
    expert_outputs,
    pair_mean,
    pointed_apart,
    similarity_matrices,
)

logger = logging.getLogger(__name__)


@torch.no_grad()
def expert_similarity(checkpoint: Path, data: Path, split: str = "valid",
                      max_tokens: int = 2048, start: Optional[Path] = None) -> list[dict]:
    """Per MoE layer: its index, the [E, E] CKA and cosine matrices and their pair means;
    with `start` (the checkpoint training began from, e.g. omoe-upcycle's output) also the
    [E, E] cosine of the experts' displacements from it ("delta", "mean_delta") and the output
    cosine the experts would have with those displacements pointed apart, lengths kept
    ("apart", "mean_apart": see `pointed_apart`)."""
    cfg, state = load_encoder_checkpoint(checkpoint)
    if cfg.moe_freq == 0:
        raise ValueError(f"{checkpoint} is a dense model: it has no experts to compare")
    dictionary = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    encoder = load_encoder(cfg, state, dictionary, str(checkpoint))
    starts = None if start is None else _start_experts(start, encoder, dictionary)
    layers = {}
    for i, layer in enumerate(encoder.layers):
        if layer.moe is not None:
            layer.moe.register_forward_hook(
                lambda mod, args, _out, i=i: layers.__setitem__(i, (mod, *args)))
    encoder(leading_sentences(data, split, dictionary, max_tokens, cfg.max_positions))
    results = []
    for i, (moe, x, padding_mask) in sorted(layers.items()):
        tokens = x[~padding_mask]
        cka, cos = similarity_matrices(expert_outputs(moe.experts, tokens))
        result = {"layer": i, "tokens": len(tokens), "cka": cka.tolist(), "cos": cos.tolist(),
                  "mean_cka": pair_mean(cka), "mean_cos": pair_mean(cos)}
        if starts is not None:
            moved = displacements(moe.experts, starts[i])
            delta = displacement_similarity(moved)
            apart = displaced(starts[i], pointed_apart(moved))
            _, apart = similarity_matrices(expert_outputs(moe.experts, tokens, apart))
            result.update(delta=delta.tolist(), mean_delta=pair_mean(delta),
                          apart=apart.tolist(), mean_apart=pair_mean(apart))
        results.append(result)
    return results


def _start_experts(start: Path, encoder, dictionary) -> dict[int, tuple[torch.Tensor, ...]]:
    """{MoE layer: (fc1_weight, fc2_weight)} of the start checkpoint; it must have the same
    experts as the trained model."""
    cfg, state = load_encoder_checkpoint(start)
    begun = load_encoder(cfg, state, dictionary, str(start))
    starts = {}
    for i, (layer, first) in enumerate(zip(encoder.layers, begun.layers)):
        if layer.moe is None:
            continue
        weights = (first.moe.experts.fc1_weight, first.moe.experts.fc2_weight) \
            if first.moe is not None else ()
        if tuple(w.shape for w in weights) != (layer.moe.experts.fc1_weight.shape,
                                               layer.moe.experts.fc2_weight.shape):
            raise ValueError(f"--start {start} does not have the trained model's experts in "
                             f"layer {i}: give the checkpoint training began from")
        starts[i] = weights
    return starts


def heat_maps(results: list[dict], title: str):
    """One matplotlib figure: a row of CKA heat maps above a row of cosine heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("cka", "cos", "delta") if "delta" in results[0] else ("cka", "cos")
    fig, axes = plt.subplots(len(metrics), len(results), figsize=(2.6 * len(results),
                                                                   2.6 * len(metrics)),
                             squeeze=False)
    for col, r in enumerate(results):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            image = ax.imshow(r[metric], vmin=0 if metric == "cka" else -1, vmax=1, cmap="viridis")
            ax.set_title(f"layer {r['layer']} {metric.upper()} {r['mean_' + metric]:.3f}", fontsize=9)
            ax.set_xlabel("expert", fontsize=8)
            ax.set_ylabel("expert", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def cli_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="omoe-analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True,
                        help="the binarised data directory the model was trained on")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens to compare on")
    parser.add_argument("--start", type=Path, default=None,
                        help="the checkpoint training began from (e.g. omoe-upcycle's output): "
                        "also compare the experts' displacements from it, and the cosine "
                        "they would give pointed as far apart as possible, lengths kept")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for similarity.png and similarity.json")
    parser.add_argument("--tensorboard-logdir", type=Path, default=None,
                        help="also write the heat maps as a TensorBoard image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        results = expert_similarity(args.checkpoint, args.data, args.split, args.tokens,
                                    args.start)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"omoe-analyze: {e}")
    print(f"expert similarity of {args.checkpoint} on {args.split} "
          f"({results[0]['tokens']} tokens), mean over expert pairs:")
    keys = ["mean_cka", "mean_cos"] + (["mean_delta", "mean_apart"] if args.start else [])
    header = ["MoE layer", "linear CKA", "cosine", "displacement cosine",
              "cosine, displacements pointed apart"][: len(keys) + 1]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for r in results:
        print(f"| {r['layer']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
    mean = lambda key: sum(r[key] for r in results) / len(results)
    print("| mean | " + " | ".join(f"{mean(k):.4f}" for k in keys) + " |")
    fig = heat_maps(results, f"{args.checkpoint.name}: expert similarity on {args.split}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out / "similarity.png", dpi=100)
        (args.out / "similarity.json").write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out / 'similarity.png'} and {args.out / 'similarity.json'}")
    elif args.tensorboard_logdir is None:
        print("(the heat maps and the per-pair matrices are written with --out DIR or "
              "--tensorboard-logdir DIR)")
    if args.tensorboard_logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(args.tensorboard_logdir)) as writer:
            writer.add_figure("expert_similarity", fig)
        print(f"wrote the heat maps to TensorBoard in {args.tensorboard_logdir}")
