"""Dense -> MoE upcycling of an omoe_roberta encoder state: `copy`, `drop` or `split`.

`copy` (sparse upcycling, Komatsuzaki et al. 2023): every expert of an MoE layer starts as
the dense FFN it replaces and the router starts random (normal, std 0.02, as BERT's
initialisation). Whatever the router picks, the renormalised top-k weights sum to 1, so the
upcycled model computes exactly what the dense one did until training moves the experts
apart: the homogeneous starting point the paper's optimizer is meant to diversify.

`drop` (Drop-Upcycling, Nakamura et al. 2025): `copy`, then in every expert a random
fraction r (`--drop-ratio`, 0.5 by default, their best) of the FFN's hidden neurons is
re-initialised: the neuron's fc1 row and bias and its fc2 column are drawn from a normal
with the mean and standard deviation of the dense fc1 weight, fc1 bias and fc2 weight.
Each expert drops its own neurons, so experts start partly different yet keep (1 - r) of
the pretrained FFN; the output bias stays shared.

`split` (MoEBERT, Zuo et al. 2022): the dense FFN's h hidden neurons are ranked by
importance; every expert keeps the `shared` most important ones and the other h - shared
are dealt out round-robin in importance order (the next E most important go one to each
expert, and so on), so every expert gets a similar mix of important and unimportant
neurons. Every neuron is kept: an expert has shared + (h - shared) / E neurons, and the E
experts together hold the whole FFN. The experts start different (they share only the top
neurons), and each is narrower than the dense FFN.

Importance. MoEBERT scores neuron j by the first-order Taylor estimate of the task loss
change if j were removed; an imported encoder has no task head and no task loss yet, so we
score it by what removing it would change in the FFN's output instead:

    importance_j = sum over real tokens x of |a_j(x)| * ||W2[:, j]||

(a_j: the neuron's activation, W2[:, j]: its output weights; ||a_j(x) W2[:, j]|| is exactly
the norm of the output change on x), summed over the first tokens of the training split of
a binarised data directory, padding excluded. Like the Taylor score it is data-driven and
needs no labels.
"""

import dataclasses
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from ..data.binarised import leading_sentences
from ..models import OMoERobertaConfig
from ..models.encoder import is_moe_layer, load_encoder, moe_args
from ..moe import MoELayer

METHODS = ("copy", "drop", "split")
DROP_RATIO = 0.5  # Drop-Upcycling's best ratio
SHARED_FRACTION = 6  # default: a sixth of the neurons shared (MoEBERT on BERT-base: 512 of 3072)


def neuron_importance(activations: torch.Tensor, fc2_weight: torch.Tensor) -> torch.Tensor:
    """importance_j = sum_x |a_j(x)| * ||W2[:, j]||: the summed norm of the change of the FFN
    output on the tokens x if hidden neuron j were pruned.

    activations: [N, h] hidden activations of N real tokens; fc2_weight: [d, h]. Returns [h].
    """
    return activations.abs().sum(0) * fc2_weight.norm(dim=0)


def split_neurons(importance: torch.Tensor, num_experts: int, shared: int) -> torch.Tensor:
    """Which dense neurons each expert keeps: [E, shared + (h - shared) / E] indices.

    Every row starts with the `shared` most important neurons, then takes every E-th of the
    rest in importance order (round-robin, so every expert gets a similar importance mix).
    Ties keep index order. Sizes are checked by :func:`split_sizes`.
    """
    order = torch.sort(importance, descending=True, stable=True).indices  # [h]
    dealt = order[shared:].view(-1, num_experts).t()  # [E, (h - shared) / E]: row e = rest[e::E]
    return torch.cat([order[:shared].expand(num_experts, -1), dealt], dim=1)


def split_sizes(
    ffn_dim: int, num_experts: int, shared: Optional[int] = None, expert_dim: Optional[int] = None
) -> tuple[int, int]:
    """(shared neurons, expert hidden size) of a split of an ffn_dim-neuron FFN into experts.

    expert_dim = shared + (ffn_dim - shared) / num_experts, so either option determines the
    other; with neither, shared is the smallest value >= ffn_dim / 6 that deals out evenly.
    Values that cannot be met stop with a ValueError that says what would work.
    """
    h, e = ffn_dim, num_experts
    if e < 1:
        raise ValueError(f"--moe-experts must be >= 1, got {e}")
    if shared is None and expert_dim is None:
        shared = h // SHARED_FRACTION + (h - h // SHARED_FRACTION) % e
    elif shared is None:
        # expert_dim = shared + (h - shared) / e  <=>  shared = (e * expert_dim - h) / (e - 1)
        if e == 1 and expert_dim == h:
            shared = 0
        elif e == 1 or (e * expert_dim - h) % (e - 1) or not h <= e * expert_dim <= e * h:
            raise ValueError(
                f"--moe-expert-ffn-dim {expert_dim} cannot split {h} neurons into {e} experts: "
                f"it must be shared + ({h} - shared) / {e} for a shared count in [0, {h}] "
                f"(e.g. {split_sizes(h, e)[1]})"
            )
        else:
            shared = (e * expert_dim - h) // (e - 1)
    if not 0 <= shared <= h:
        raise ValueError(f"--split-shared must be between 0 and the FFN size {h}, got {shared}")
    if (h - shared) % e:
        raise ValueError(
            f"--split-shared {shared} leaves {h - shared} neurons, which cannot be dealt out "
            f"evenly to {e} experts: choose it so that {h} - shared is a multiple of {e} "
            f"(e.g. {shared + (h - shared) % e})"
        )
    size = shared + (h - shared) // e
    if expert_dim is not None and expert_dim != size:
        raise ValueError(
            f"--moe-expert-ffn-dim {expert_dim} and --split-shared {shared} disagree: "
            f"{shared} shared + ({h} - {shared}) / {e} dealt = {size} neurons per expert; "
            "give only one of the two"
        )
    return shared, size


@torch.no_grad()
def dense_importance(
    cfg: OMoERobertaConfig, dense: dict[str, torch.Tensor], data: Path, max_tokens: int = 16384,
    batch_size: int = 64,
) -> dict[int, torch.Tensor]:
    """{layer index: [h] importance} of every FFN of a dense state, on the first max_tokens
    tokens of data's training split (a binarised omoe-prepare-data directory)."""
    data = Path(data)
    if not (data / "input0" / "dict.txt").is_file():
        raise FileNotFoundError(
            f"--importance-data {data} has no input0/dict.txt: give a data directory written "
            "by omoe-prepare-data with this model's dictionary (--srcdict)"
        )
    dictionary = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    encoder = load_encoder(cfg, dense, dictionary, "the dense checkpoint")
    importance = {i: torch.zeros(cfg.encoder_ffn_embed_dim) for i in range(cfg.encoder_layers)}
    real = torch.empty(0, dtype=torch.bool)  # [B, T] of the batch in flight

    def score(i: int, layer: nn.Module):
        def hook(_module, _args, hidden):  # hidden: fc1 output [B, T, h]
            importance[i] += neuron_importance(layer.activation_fn(hidden[real]), layer.fc2.weight)
        return hook

    hooks = [layer.fc1.register_forward_hook(score(i, layer))
             for i, layer in enumerate(encoder.layers)]
    examples = leading_sentences(data, "train", dictionary, max_tokens, cfg.max_positions)
    for batch in examples.split(batch_size):
        real = batch.ne(dictionary.pad())
        encoder(batch)
    for hook in hooks:
        hook.remove()
    return importance


def upcycle(
    cfg: OMoERobertaConfig,
    dense: dict[str, torch.Tensor],
    num_experts: int,
    top_k: int = 1,
    moe_freq: int = 1,
    seed: int = 0,
    neurons: Optional[dict[int, torch.Tensor]] = None,
) -> tuple[OMoERobertaConfig, dict[str, torch.Tensor]]:
    """The MoE configuration and state of a dense omoe_roberta state.

    neurons: None for `copy`; for `split`, {layer index: [E, h_e] dense neurons of every
    expert} (:func:`split_neurons`) for every layer that becomes MoE.
    """
    if cfg.moe_freq != 0:
        raise ValueError("upcycling needs a dense checkpoint (--moe-freq 0)")
    moe_cfg = dataclasses.replace(cfg, moe_experts=num_experts, moe_top_k=top_k, moe_freq=moe_freq)
    if neurons:
        moe_cfg.moe_expert_ffn_dim = next(iter(neurons.values())).size(1)
    state = dict(dense)
    generator = torch.Generator().manual_seed(seed)
    for i in range(cfg.encoder_layers):
        if not is_moe_layer(i, moe_freq):
            continue
        layer = MoELayer(moe_args(moe_cfg, i))  # validates experts and top-k
        with torch.no_grad():
            layer.router.gate.weight.normal_(0.0, 0.02, generator=generator)
        fc1, fc2 = (_linear(state, f"encoder.layers.{i}.{name}") for name in ("fc1", "fc2"))
        layer.experts.copy_dense_(fc1, fc2, None if neurons is None else neurons[i])
        for key, value in layer.state_dict().items():
            state[f"encoder.layers.{i}.moe.{key}"] = value
    return moe_cfg, state


def split_assignment(
    cfg: OMoERobertaConfig,
    dense: dict[str, torch.Tensor],
    data: Path,
    num_experts: int,
    moe_freq: int = 1,
    shared: Optional[int] = None,
    expert_dim: Optional[int] = None,
    max_tokens: int = 16384,
) -> dict[int, torch.Tensor]:
    """`split` upcycling's neurons for :func:`upcycle`: importance on data's training split,
    then :func:`split_neurons` for every layer that becomes MoE."""
    shared, _ = split_sizes(cfg.encoder_ffn_embed_dim, num_experts, shared, expert_dim)
    importance = dense_importance(cfg, dense, data, max_tokens)
    return {i: split_neurons(importance[i], num_experts, shared)
            for i in range(cfg.encoder_layers) if is_moe_layer(i, moe_freq)}


def drop_neurons_(
    moe_cfg: OMoERobertaConfig, state: dict[str, torch.Tensor], ratio: float = DROP_RATIO,
    seed: int = 0,
) -> None:
    """`drop` upcycling, in place on a copy-upcycled state (:func:`upcycle`): every expert
    re-initialises its own random `ratio` of the hidden neurons (see the module docstring)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--drop-ratio must be in [0, 1], got {ratio}")
    generator = torch.Generator().manual_seed(seed + 1)  # not the router's stream
    for i in range(moe_cfg.encoder_layers):
        if not is_moe_layer(i, moe_cfg.moe_freq):
            continue
        prefix = f"encoder.layers.{i}.moe.experts."
        fc1_w, fc1_b, fc2_w = (state[prefix + n] for n in ("fc1_weight", "fc1_bias", "fc2_weight"))
        E, h = fc1_b.shape
        dropped = round(ratio * h)
        for e in range(E):
            neurons = torch.randperm(h, generator=generator)[:dropped]
            fc1_w[e, neurons] = _like(fc1_w[e], (dropped, fc1_w.size(2)), generator)
            fc1_b[e, neurons] = _like(fc1_b[e], (dropped,), generator)
            fc2_w[e][:, neurons] = _like(fc2_w[e], (fc2_w.size(1), dropped), generator)


def _like(weights: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A normal draw of `shape` with the mean and standard deviation of `weights` (every
    expert still holds the dense values when it is drawn)."""
    return torch.normal(float(weights.mean()), float(weights.std()), shape, generator=generator)


def _linear(state: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    """Pop prefix.weight / prefix.bias out of state as an nn.Linear."""
    weight, bias = state.pop(f"{prefix}.weight"), state.pop(f"{prefix}.bias")
    linear = nn.Linear(weight.size(1), weight.size(0))
    linear.load_state_dict({"weight": weight, "bias": bias})
    return linear
