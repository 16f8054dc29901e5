"""The MoE router losses for any fairseq criterion: a mixin (`RouterLosses`) and its options
(`RouterLossConfig`). The wrapped criterion's loss gets, summed per example like the task
loss, moe_aux_weight * load_balancing + moe_z_loss_weight * z_loss (means over MoE layers),
and in training moe_orthogonality_weight * the expert-output orthogonality loss (logged as
`moe_orth`, unweighted, mean over MoE layers).

Logs `moe_lb` and `moe_z` (unweighted, mean over MoE layers), `moe_share_e{j}` (share of
the top-k assignments that expert j received, mean over MoE layers) and `moe_max_load` (max
over layers and experts of share * E: 1 = balanced, E = collapsed)."""

from dataclasses import dataclass, field

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..analysis.similarity import every_expert
from ..moe import MoELayer, expert_orthogonality_loss

COUNT_PREFIX = "_moe_count"  # hidden meters "_moe_count_l{layer}_e{expert}" (not printed)


@dataclass
class RouterLossConfig(FairseqDataclass):
    moe_aux_weight: float = field(
        default=0.01,
        metadata={"help": "weight of the load-balancing loss (mean over MoE layers)"},
    )
    moe_z_loss_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the router z-loss (mean over MoE layers); 0 = off"},
    )
    moe_orthogonality_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the expert-output orthogonality loss (Guo et al. 2025: "
                  "mean squared cosine between every two experts' outputs on the same tokens, "
                  "mean over MoE layers), in training; 0 = off"},
    )
    moe_orthogonality_tokens: int = field(
        default=64,
        metadata={"help": "tokens per MoE layer and batch, evenly spaced over its non-padding "
                  "tokens, that every expert is run on for the orthogonality loss"},
    )


class RouterLosses:
    """Mix in before a fairseq criterion whose config includes `RouterLossConfig`."""

    def __init__(self, cfg, task) -> None:
        super().__init__(cfg, task)
        for name in ("moe_aux_weight", "moe_z_loss_weight", "moe_orthogonality_weight",
                     "moe_orthogonality_tokens"):
            if getattr(cfg, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 0, got {getattr(cfg, name)}")
        self.aux_weight = cfg.moe_aux_weight
        self.z_loss_weight = cfg.moe_z_loss_weight
        self.orthogonality_weight = cfg.moe_orthogonality_weight
        self.orthogonality_tokens = cfg.moe_orthogonality_tokens

    def forward(self, model, sample, reduce=True):
        extras = []  # the model's `extra` output, caught without re-running the forward
        hooks = [model.register_forward_hook(lambda _m, _i, out: extras.append(out[1]))]
        orthogonality = []  # per MoE layer, in training with a weight
        if self.orthogonality_weight > 0 and model.training:
            hooks += [layer.register_forward_hook(
                lambda mod, args, _out: orthogonality.append(self._orthogonality(mod, *args)))
                for layer in model.modules() if isinstance(layer, MoELayer)]
        try:
            loss, sample_size, logging_output = super().forward(model, sample, reduce)
        finally:
            for hook in hooks:
                hook.remove()
        moe_aux = extras[-1]["moe_aux"]
        if not moe_aux:  # a dense model (--moe-freq 0)
            return loss, sample_size, logging_output
        lb = torch.stack([aux.load_balancing for aux in moe_aux]).mean()
        z = torch.stack([aux.z_loss for aux in moe_aux]).mean()
        loss = loss + (self.aux_weight * lb + self.z_loss_weight * z) * sample_size
        if orthogonality:
            orth = torch.stack(orthogonality).mean()
            loss = loss + self.orthogonality_weight * orth * sample_size
            logging_output["moe_orth"] = orth.data * sample_size
        logging_output["loss"] = loss.data
        logging_output["moe_lb"] = lb.data * sample_size
        logging_output["moe_z"] = z.data * sample_size
        for layer, aux in enumerate(moe_aux):
            for expert, count in enumerate(aux.counts):
                logging_output[f"{COUNT_PREFIX}_l{layer}_e{expert}"] = count.data
        return loss, sample_size, logging_output

    def _orthogonality(self, layer: MoELayer, x: torch.Tensor, padding_mask=None) -> torch.Tensor:
        """The orthogonality loss of one MoE layer on up to orthogonality_tokens of its
        non-padding input tokens x [..., d]."""
        tokens = x.reshape(-1, x.size(-1))
        if padding_mask is not None:
            tokens = tokens[~padding_mask.reshape(-1)]
        n = min(self.orthogonality_tokens, tokens.size(0))
        picked = torch.linspace(0, tokens.size(0) - 1, n, device=tokens.device).long()
        return expert_orthogonality_loss(every_expert(layer.experts, tokens[picked]))

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        if not logging_outputs or "moe_lb" not in logging_outputs[0]:
            return
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("moe_lb", "moe_z", "moe_orth"):
            if key not in logging_outputs[0]:
                continue
            total = sum(log[key] for log in logging_outputs)
            metrics.log_scalar(key, total / sample_size, sample_size, round=4)
        counts = {}  # (layer, expert) -> assignments
        for key in logging_outputs[0]:
            if key.startswith(COUNT_PREFIX):
                metrics.log_scalar_sum(key, sum(log[key] for log in logging_outputs))
                layer, expert = key[len(COUNT_PREFIX) + 2 :].split("_e")
                counts[int(layer), int(expert)] = key
        num_layers = 1 + max(layer for layer, _ in counts)
        num_experts = 1 + max(expert for _, expert in counts)

        def shares(meters) -> torch.Tensor:  # [layers, experts], rows sum to 1
            table = torch.tensor(
                [
                    [float(meters[counts[l, e]].sum) for e in range(num_experts)]
                    for l in range(num_layers)
                ]
            )
            return table / table.sum(dim=1, keepdim=True).clamp(min=1.0)

        for expert in range(num_experts):
            metrics.log_derived(
                f"moe_share_e{expert}",
                lambda meters, e=expert: round(shares(meters)[:, e].mean().item(), 3),
            )
        metrics.log_derived(
            "moe_max_load",
            lambda meters: round(shares(meters).max().item() * num_experts, 3),
        )
