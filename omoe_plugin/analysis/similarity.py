"""Expert similarity (the paper's homogeneous-representation measure): every expert is
applied to the same tokens and the outputs are compared pairwise, by linear CKA
(Kornblith et al. 2019) and by mean cosine similarity."""

from typing import Optional

import torch
import torch.nn.functional as F

from ..moe import StackedExperts


def every_expert(experts: StackedExperts, x: torch.Tensor,
                 weights: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Every expert's FFN output for every token: x [n, d] -> [E, n, d] (no dropout), in fp32
    whatever the precision of the tokens and the weights (fp16 training validates in fp16);
    differentiable (the expert-orthogonality loss trains through it).

    weights: (fc1_weight, fc2_weight) to use instead of the experts' own (same shapes)."""
    fc1, fc2 = weights if weights is not None else (experts.fc1_weight, experts.fc2_weight)
    h = experts.activation_fn(torch.einsum("nd,ehd->enh", x.float(), fc1.float())
                              + experts.fc1_bias.float()[:, None])
    return torch.einsum("enh,edh->end", h, fc2.float()) + experts.fc2_bias.float()[:, None]


@torch.no_grad()
def expert_outputs(experts: StackedExperts, x: torch.Tensor,
                   weights: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """`every_expert` without gradients, for the similarity measures."""
    return every_expert(experts, x, weights)


def displacements(experts: StackedExperts, start: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Every expert's weights minus its start, flattened: [E, h d + d h] (fc1 then fc2).

    start: (fc1_weight, fc2_weight) as they were when training began."""
    E = experts.num_experts
    return torch.cat([(experts.fc1_weight.float() - start[0].float()).reshape(E, -1),
                      (experts.fc2_weight.float() - start[1].float()).reshape(E, -1)], dim=1)


def displaced(start: tuple[torch.Tensor, torch.Tensor],
              moved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fc1_weight, fc2_weight): `start` moved by the flattened displacements `moved`
    [E, h d + d h] (the inverse of `displacements`)."""
    fc1_size = start[0][0].numel()
    return (start[0].float() + moved[:, :fc1_size].reshape(start[0].shape),
            start[1].float() + moved[:, fc1_size:].reshape(start[1].shape))


def pointed_apart(moved: torch.Tensor) -> torch.Tensor:
    """Displacements [E, p] pointed about as far apart as E directions go, each keeping its
    length: the experts' shared component (their mean) removed, every row rescaled to its old
    norm. The mean pairwise cosine falls to about -1/(E-1), the least E vectors can have
    (exactly, when the centred rows have equal lengths). Applied to trained experts it bounds
    what changing the update directions alone can do to their similarity. Displacements that
    are all alike have no direction apart and become zero."""
    centred = moved.double() - moved.double().mean(0, keepdim=True)
    return (F.normalize(centred, dim=1) * moved.double().norm(dim=1, keepdim=True)).to(moved)


def displacement_similarity(moved: torch.Tensor) -> torch.Tensor:
    """[E, E] cosine between the experts' displacements from their start ([E, p], see
    `displacements`): 1 where two experts moved the same way, 0 where orthogonally. An
    expert that has not moved has cosine 0 with every other."""
    unit = F.normalize(moved.double(), dim=1)
    return (unit @ unit.T).float().fill_diagonal_(1.0)


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two representations of the same n examples (X [n, p], Y [n, q]):
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc; in [0, 1]."""
    X = (X - X.mean(0)).double()
    Y = (Y - Y.mean(0)).double()
    cross = (Y.T @ X).square().sum()
    return (cross / ((X.T @ X).norm() * (Y.T @ Y).norm()).clamp(min=1e-30)).float()


def similarity_matrices(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, E] linear CKA and mean token cosine between every pair of experts' outputs
    ([E, n, d]); the diagonals are 1."""
    E = outputs.size(0)
    cka, cos = torch.ones(E, E), torch.ones(E, E)
    for i in range(E):
        for j in range(i + 1, E):
            cka[i, j] = cka[j, i] = linear_cka(outputs[i], outputs[j])
            cos[i, j] = cos[j, i] = F.cosine_similarity(outputs[i], outputs[j], dim=-1).mean()
    return cka, cos


def pair_mean(matrix: torch.Tensor) -> float:
    """Mean of an [E, E] similarity matrix over expert pairs (1.0 for a single expert)."""
    E = matrix.size(0)
    if E == 1:
        return 1.0
    return float(matrix[torch.triu(torch.ones(E, E, dtype=torch.bool), diagonal=1)].mean())


def pairwise_similarity(outputs: torch.Tensor) -> tuple[float, float]:
    """Mean over expert pairs of (linear CKA, mean token cosine) of outputs [E, n, d]."""
    cka, cos = similarity_matrices(outputs)
    return pair_mean(cka), pair_mean(cos)


def layer_similarity(
    experts: StackedExperts,
    x: torch.Tensor,
    padding_mask: Optional[torch.Tensor] = None,
    max_tokens: int = 512,
) -> tuple[float, float]:
    """(CKA, cosine) of one MoE layer's experts on up to max_tokens of its real input tokens.

    x: [..., d] the layer input; padding_mask: x.shape[:-1], True = padding."""
    tokens = x.reshape(-1, x.size(-1))
    if padding_mask is not None:
        tokens = tokens[~padding_mask.reshape(-1)]
    return pairwise_similarity(expert_outputs(experts, tokens[:max_tokens]))
