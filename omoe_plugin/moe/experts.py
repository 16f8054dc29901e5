"""Stacked feed-forward experts with sparse dispatch: each expert runs only on its tokens."""

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Attribute names the OMoE optimizer reads off expert weight tensors. Biases are not tagged:
# they have no input space, so they take the plain base-optimizer update.
EXPERT_AXIS_ATTR = "moe_expert_axis"  # which tensor dimension indexes the experts
EXPERT_INPUT_ATTR = "moe_input"  # "fc1" (input = token x) or "fc2" (input = expert hidden)
EXPERT_LAYER_ATTR = "moe_layer"  # index of the MoE layer the tensor belongs to


def expert_weight_key(layer_index: int, role: str) -> str:
    """How the optimizer and the routed-input capture name a stacked expert weight."""
    return f"{layer_index}.{role}"


class StackedExperts(nn.Module):
    """E two-layer FFN experts stored as stacked tensors, so expert e is a slice.

    Shapes follow nn.Linear's [out, in] layout: fc1_weight [E, h, d], fc1_bias [E, h],
    fc2_weight [E, d, h], fc2_bias [E, d].

    Dispatch sorts the (token, slot) assignments by expert once per layer, reads the
    experts' token counts once (the layer's one host synchronisation), runs each expert's FFN
    on its contiguous block of the sorted tokens, and places all weighted results back in
    one scatter. The loop over experts is static, with no Python branch on routed counts,
    so an expert that gets no token costs a few empty kernels and the ONNX graph keeps every
    expert whatever the export example routed.
    """

    def __init__(
        self,
        num_experts: int,
        embed_dim: int,
        ffn_dim: int,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
        activation_dropout: float = 0.0,
        layer_index: int = 0,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.layer_index = layer_index
        # set by the alternating task while it accumulates statistics (see moe/capture.py);
        # a static attribute, not a data-dependent branch, and None whenever exporting
        self.capture: Optional[Callable[..., None]] = None
        self.activation_fn = activation_fn
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, ffn_dim, embed_dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, ffn_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, embed_dim, ffn_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, embed_dim))
        for name, weight in (("fc1", self.fc1_weight), ("fc2", self.fc2_weight)):
            setattr(weight, EXPERT_AXIS_ATTR, 0)
            setattr(weight, EXPERT_INPUT_ATTR, name)
            setattr(weight, EXPERT_LAYER_ATTR, layer_index)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT initialisation (normal, std 0.02; zero biases), as fairseq's init_bert_params."""
        for weight in (self.fc1_weight, self.fc2_weight):
            nn.init.normal_(weight, mean=0.0, std=0.02)
        for bias in (self.fc1_bias, self.fc2_bias):
            nn.init.zeros_(bias)

    @torch.no_grad()
    def copy_dense_(
        self, fc1: nn.Linear, fc2: nn.Linear, neurons: Optional[torch.Tensor] = None
    ) -> None:
        """Build every expert out of one dense FFN's hidden neurons.

        neurons: [E, h_e] the dense hidden units expert e keeps, in order (None: all of them,
        every expert a copy of the FFN: sparse upcycling). Every expert keeps the output bias.
        """
        if neurons is None:
            neurons = torch.arange(fc1.out_features).expand(self.num_experts, -1)
        self.fc1_weight.copy_(fc1.weight[neurons])  # [E, h_e, d]
        self.fc1_bias.copy_(fc1.bias[neurons])  # [E, h_e]
        self.fc2_weight.copy_(fc2.weight[:, neurons].transpose(0, 1))  # [d, E, h_e] -> [E, d, h_e]
        self.fc2_bias.copy_(fc2.bias.expand_as(self.fc2_bias))

    def forward(
        self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Mix the chosen experts' outputs.

        x: [N, d] tokens; experts: [N, k] chosen expert ids (E = none);
        weights: [N, k] combine weights. Returns [N, d].
        """
        E, k = self.num_experts, experts.size(1)
        assignment = experts.reshape(-1)  # [N k], expert of each (token, slot); E = padding
        # grouped by expert, padding last, in token order within an expert: the keys are
        # unique, so any sort is this stable one (ONNX has no stable sort)
        slots = torch.arange(assignment.numel(), device=assignment.device)
        order = torch.argsort(assignment * assignment.numel() + slots)  # [N k]
        # tokens per expert (the last: padding), as a fixed-size count: bincount's length
        # would depend on the data, which torch.export cannot trace
        ids = torch.arange(E + 1, device=assignment.device)
        sizes = (assignment.unsqueeze(1) == ids).sum(0).tolist()  # E + 1 ints
        torch._check(sum(sizes) == assignment.numel())  # what torch.export cannot know
        routed = torch.cat(order.split(sizes)[:E])  # [n_1 + ... + n_E] padding's dropped
        # unbind once: its backward stacks the E slice gradients in one tensor, where
        # indexing the parameter per expert would allocate a full-size gradient per expert.
        fc1_w, fc1_b = self.fc1_weight.unbind(0), self.fc1_bias.unbind(0)
        fc2_w, fc2_b = self.fc2_weight.unbind(0), self.fc2_bias.unbind(0)
        ys = []
        # the token of each routed (token, slot); assignments are non-negative, so truncating
        # division is floor division, and one ONNX Div where `//` is seven operators
        tokens = torch.div(routed, k, rounding_mode="trunc")
        for e, x_e in enumerate(x[tokens].split(sizes[:E])):  # x_e [n_e, d]: e's tokens
            z = F.linear(x_e, fc1_w[e], fc1_b[e])  # [n_e, h]
            h = self.activation_fn(z)
            y = F.linear(self.activation_dropout(h), fc2_w[e], fc2_b[e])  # [n_e, d]
            if self.capture is not None:  # each weight's input and output on expert e's tokens
                self.capture(self.layer_index, E, e, fc1=x_e, fc2=h,
                             outputs={"fc1": z, "fc2": y})
            ys.append(y)
        y = torch.cat(ys) * weights.reshape(-1)[routed].unsqueeze(-1).to(x.dtype)
        # each output to its (token, slot) place, then the k slots summed in a fixed order: no
        # index repeats in the scatter, whose additions would run in any order in ONNX Runtime
        placed = x.new_zeros(assignment.numel(), x.size(1)).index_copy_(0, routed, y)
        return placed.view(-1, k, x.size(1)).sum(1)  # [N, d]
