"""Stacked feed-forward experts with sparse dispatch: each expert runs only on its tokens."""

import warnings
import weakref
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn
import torch.nn.functional as F

from .parallel import ExpertParallel

# torch 2.13 deprecates its public differentiable all_to_all_single for one in a private
# module (torch.distributed._functional_collectives); the public one is kept here, and its
# notice, printed at every expert-parallel start, is not about the user's run
warnings.filterwarnings("ignore", category=FutureWarning,
                        message=r"torch\.distributed\.nn\.functional\.all_to_all_single is deprecated")

# id(weight) -> the memory its gradient is written into at every step (see _weight_gradient),
# dropped with the weight
_GRADIENT_MEMORY: dict[int, torch.Tensor] = {}

# Attribute names the OMoE optimizer reads off expert weight tensors. Biases are not tagged:
# they have no input space, so they take the plain base-optimizer update.
EXPERT_AXIS_ATTR = "moe_expert_axis"  # which tensor dimension indexes the experts
EXPERT_INPUT_ATTR = "moe_input"  # "fc1" (input = token x) or "fc2" (input = expert hidden)
EXPERT_LAYER_ATTR = "moe_layer"  # index of the MoE layer the tensor belongs to
# on every expert weight and bias: the ExpertParallel the experts are split by (None: all here)
EXPERT_PARALLEL_ATTR = "moe_expert_parallel"


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

    With `parallel`, this rank holds only its E / N experts (parameters [E / N, ...], global
    ids first_expert ...) of an expert-parallel group of N ranks. Each rank routes its own
    tokens; the routed token vectors travel to their experts' ranks and the outputs back with
    two all-to-alls over the group (after one of the per-expert counts), differentiable, so
    the backward pass sends the gradients the same way. Dropless, as in one process: no
    capacity limit, no token dropped, and padding is never sent. Every rank of the group must
    run every forward and backward of the layer, as with data parallelism. The expert
    parameters are tagged with `expert` (fairseq's legacy_ddp leaves them out of its
    all-reduce: their gradients belong to `parallel.replicas`).
    """

    def __init__(
        self,
        num_experts: int,
        embed_dim: int,
        ffn_dim: int,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
        activation_dropout: float = 0.0,
        layer_index: int = 0,
        parallel: Optional[ExpertParallel] = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts  # global: the router's E
        self.parallel = parallel
        local = range(num_experts) if parallel is None else parallel.local_experts(num_experts)
        self.first_expert, self.num_local_experts = local.start, len(local)
        self.layer_index = layer_index
        # set by the alternating task while it accumulates statistics (see moe/capture.py);
        # a static attribute, not a data-dependent branch, and None whenever exporting
        self.capture: Optional[Callable[..., None]] = None
        self.activation_fn = activation_fn
        self.activation_dropout = nn.Dropout(activation_dropout)
        E = self.num_local_experts
        self.fc1_weight = nn.Parameter(torch.empty(E, ffn_dim, embed_dim))
        self.fc1_bias = nn.Parameter(torch.empty(E, ffn_dim))
        self.fc2_weight = nn.Parameter(torch.empty(E, embed_dim, ffn_dim))
        self.fc2_bias = nn.Parameter(torch.empty(E, embed_dim))
        for name, weight in (("fc1", self.fc1_weight), ("fc2", self.fc2_weight)):
            setattr(weight, EXPERT_AXIS_ATTR, 0)
            setattr(weight, EXPERT_INPUT_ATTR, name)
            setattr(weight, EXPERT_LAYER_ATTR, layer_index)
        for param in self.parameters():
            setattr(param, EXPERT_PARALLEL_ATTR, parallel)
            if parallel is not None:
                param.expert = True
        self.reset_parameters()

    @property
    def local(self) -> slice:
        """The rows of this rank's experts in an [E, ...] tensor over all experts."""
        return slice(self.first_expert, self.first_expert + self.num_local_experts)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BERT initialisation (normal, std 0.02; zero biases), as fairseq's init_bert_params.
        Drawn for all E experts and sliced, so every rank's experts under expert parallelism
        are those of one process built from the same random state."""
        for weight in (self.fc1_weight, self.fc2_weight):
            every = weight.new_empty(self.num_experts, *weight.shape[1:])
            weight.copy_(nn.init.normal_(every, mean=0.0, std=0.02)[self.local])
        for bias in (self.fc1_bias, self.fc2_bias):
            nn.init.zeros_(bias)

    @torch.no_grad()
    def copy_dense_(
        self, fc1: nn.Linear, fc2: nn.Linear, neurons: Optional[torch.Tensor] = None
    ) -> None:
        """Build every expert out of one dense FFN's hidden neurons.

        neurons: [E, h_e] the dense hidden units expert e keeps, in order (None: all of them,
        every expert a copy of the FFN: sparse upcycling), of which this rank's experts take
        their rows. Every expert keeps the output bias.
        """
        if neurons is None:
            neurons = torch.arange(fc1.out_features).expand(self.num_experts, -1)
        neurons = neurons[self.local]
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
        # the token of each routed (token, slot); assignments are non-negative, so truncating
        # division is floor division, and one ONNX Div where `//` is seven operators
        tokens = torch.div(routed, k, rounding_mode="trunc")
        # index_select, not x[tokens]: the same gather, but its backward adds the rows with
        # index_add_, where indexing's backward takes index_put_'s accumulating path, 4x
        # slower on CPU
        routed_x = x.index_select(0, tokens)
        if self.parallel is None:
            y = self._ffn(routed_x, sizes[:E])
        else:
            y = self._exchange(routed_x, sizes[:E])
        y = y * weights.reshape(-1)[routed].unsqueeze(-1).to(x.dtype)
        # each output to its (token, slot) place, then the k slots summed in a fixed order: no
        # index repeats in the scatter, whose additions would run in any order in ONNX Runtime
        placed = x.new_zeros(assignment.numel(), x.size(1)).index_copy_(0, routed, y)
        return placed.view(-1, k, x.size(1)).sum(1)  # [N, d]

    def _ffn(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Each local expert's FFN on its block of x ([n, d], sizes[e] rows for expert e, in
        order): [n, d].

        With a gradient, each of the two products runs over all experts' blocks at once
        (grouped_linear: one weight gradient per stacked weight) and the activation once over
        all of them. Without (inference, export), each expert's FFN runs on its block and only
        the [n, d] outputs are joined: joining and re-cutting the [n, h] hidden activations
        would cost two copies of them per layer in the exported graph."""
        weights = (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)
        if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
            z = grouped_linear(x, sizes, self.fc1_weight, self.fc1_bias)  # [n, h]
            h = self.activation_fn(z)
            y = grouped_linear(self.activation_dropout(h), sizes, self.fc2_weight, self.fc2_bias)
            blocks = zip(x.split(sizes), z.split(sizes), h.split(sizes), y.split(sizes))
        else:
            fc1_w, fc1_b, fc2_w, fc2_b = (w.unbind(0) for w in weights)
            blocks = []
            for e, x_e in enumerate(x.split(sizes)):  # x_e [n_e, d]: e's tokens
                z_e = F.linear(x_e, fc1_w[e], fc1_b[e])  # [n_e, h]
                h_e = self.activation_fn(z_e)
                y_e = F.linear(self.activation_dropout(h_e), fc2_w[e], fc2_b[e])  # [n_e, d]
                blocks.append((x_e, z_e, h_e, y_e))
            y = torch.cat([y_e for *_, y_e in blocks])
        if self.capture is not None:  # each weight's input and output on expert e's tokens
            for e, (x_e, z_e, h_e, y_e) in enumerate(blocks):
                self.capture(self.layer_index, self.num_local_experts, e, fc1=x_e, fc2=h_e,
                             outputs={"fc1": z_e, "fc2": y_e})
        return y

    def _exchange(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The experts' outputs on this rank's routed tokens x ([n, d], grouped by global
        expert, sizes[e] rows for expert e), computed on the ranks that hold the experts."""
        group, ranks, E = self.parallel.group, self.parallel.size, self.num_local_experts
        # rows for rank r, local expert j at r * E + j; received: from rank r, expert j there
        send_counts = torch.tensor(sizes, device=x.device)
        counts = torch.empty_like(send_counts)
        dist.all_to_all_single(counts, send_counts, group=group)
        received_sizes = counts.tolist()
        send_splits = [sum(sizes[r * E:(r + 1) * E]) for r in range(ranks)]
        recv_splits = [sum(received_sizes[r * E:(r + 1) * E]) for r in range(ranks)]
        received = dist_fn.all_to_all_single(
            x.new_empty(sum(recv_splits), x.size(1)), x, recv_splits, send_splits, group=group)
        # received by source rank, then expert: regroup by expert, the sources in rank order
        expert = torch.arange(E, device=x.device).repeat(ranks)
        expert = expert.repeat_interleave(counts, output_size=received.size(0))
        grouping = torch.argsort(expert, stable=True)
        y = self._ffn(received[grouping], [sum(received_sizes[j::E]) for j in range(E)])
        y = torch.empty_like(y).index_copy(0, grouping, y)  # back to the received order
        return dist_fn.all_to_all_single(x.new_empty(x.shape), y, send_splits, recv_splits,
                                         group=group)


def grouped_linear(x: torch.Tensor, sizes: list[int], weight: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """x's row blocks through their experts' linear maps, differentiable: block e (sizes[e]
    rows of x [n, i]) times weight[e] ([E, o, i], nn.Linear's layout) plus bias[e] ([E, o]);
    [n, o]. The same products as a loop of F.linear over the blocks, bit for bit.

    The weight's gradient is written, expert by expert, straight into one [E, o, i] tensor
    that autograd keeps as weight.grad, and that tensor's memory is kept from one step to the
    next (see _weight_gradient). A loop of F.linear over the stacked weight's slices costs two
    passes over the expert weights at every step that a dense FFN of the same active size does
    not pay: autograd stacks the E slice gradients into a new tensor, and that new tensor, tens
    of MB, comes from the operating system afresh (the CPU allocator does not cache blocks that
    large), page by page.
    """
    return _GroupedLinear.apply(x, sizes, weight, bias)


class _GroupedLinear(torch.autograd.Function):
    """grouped_linear: the same products as F.linear and its backward, in the same order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)  # weight comes back as the parameter itself
        ctx.sizes = sizes
        out = x.new_empty(x.size(0), weight.size(1))
        for e, (x_e, out_e) in enumerate(zip(x.split(sizes), out.split(sizes))):
            torch.addmm(bias[e], x_e, weight[e].t(), out=out_e)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, _, need_weight, need_bias = ctx.needs_input_grad
        grad_x = torch.empty_like(x) if need_x else None
        grad_weight = _weight_gradient(weight) if need_weight else None
        grad_bias = grad.new_empty(weight.shape[:2]) if need_bias else None
        blocks = zip(grad.split(ctx.sizes), x.split(ctx.sizes),
                     grad_x.split(ctx.sizes) if need_x else [None] * len(ctx.sizes))
        # an expert without tokens gets zero gradients: a product over an empty sum is 0
        for e, (g_e, x_e, grad_x_e) in enumerate(blocks):
            if need_x:
                torch.mm(g_e, weight[e], out=grad_x_e)
            if need_weight:
                torch.mm(g_e.t(), x_e, out=grad_weight[e])
            if need_bias:
                torch.sum(g_e, 0, out=grad_bias[e])
        return grad_x, None, grad_weight, grad_bias


def _weight_gradient(weight: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like weight to write its gradient into.

    While weight.grad is None (an optimizer's zero_grad sets it so), it is a new tensor on
    memory kept for weight from one step to the next, which autograd takes as weight.grad
    without a copy: so the gradient's pages are touched once per run, not once per step. The
    price: a gradient tensor held past the optimizer step is overwritten by the next backward.
    When weight.grad exists, autograd adds the new gradient to it (gradient accumulation), so
    it gets a tensor of its own.
    """
    if weight.grad is not None:
        return torch.empty_like(weight)
    kept = _GRADIENT_MEMORY.get(id(weight))
    if kept is None:
        weakref.finalize(weight, _GRADIENT_MEMORY.pop, id(weight), None)
    if kept is None or (kept.shape, kept.dtype, kept.device) != (
            weight.shape, weight.dtype, weight.device):
        kept = _GRADIENT_MEMORY[id(weight)] = torch.empty_like(weight)
    return kept.detach()  # a tensor of its own on that memory: autograd keeps it as is
