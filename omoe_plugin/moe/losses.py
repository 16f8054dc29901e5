"""Router auxiliary losses (Switch/GShard load balancing, the ST-MoE router z-loss) and the
expert-output orthogonality loss."""

import torch


def expert_counts(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert ([E], float) from routed ids [N, k]; id E (padding) is dropped."""
    one_hot = torch.nn.functional.one_hot(experts, num_experts + 1)  # [N, k, E + 1]
    return one_hot.sum(dim=(0, 1))[:num_experts].float()


def load_balancing_loss(
    probs: torch.Tensor, experts: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """E * sum_e P_e * f_e over the routed (non-padding) tokens.

    P_e is the mean router probability of expert e and f_e the fraction of the N * k
    top-k assignments that went to e (so sum_e f_e = 1). It is 1 for a perfectly uniform
    router and E when every token goes to one expert with certainty.

    probs: [N, E] fp32; experts: [N, k] with id E marking padding tokens.
    """
    routed = (experts[:, 0] < num_experts).float()  # [N]
    num_routed = routed.sum().clamp(min=1.0)
    mean_prob = (probs * routed.unsqueeze(-1)).sum(dim=0) / num_routed  # [E]
    frac = expert_counts(experts, num_experts) / (num_routed * experts.size(1))  # [E]
    return num_experts * (mean_prob * frac).sum()


def router_z_loss(logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Mean over routed tokens of logsumexp(logits)^2 (ST-MoE), which keeps logits small."""
    routed = (experts[:, 0] < logits.size(-1)).float()
    z = torch.logsumexp(logits, dim=-1).square()
    return (z * routed).sum() / routed.sum().clamp(min=1.0)


def expert_orthogonality_loss(outputs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens and expert pairs i != j of cos^2(y_i, y_j), for every expert's output
    on the same tokens (outputs [E, n, d], e.g. `analysis.similarity.every_expert`): 0 when
    the experts' outputs are orthogonal on every token, 1 when they are parallel. The
    orthogonality loss of Guo et al. 2025 (arXiv 2505.22323), which pushes the experts of a
    token apart, here on a sample of tokens through every expert, so it applies at top-1 too."""
    E = outputs.size(0)
    unit = torch.nn.functional.normalize(outputs, dim=-1)
    squares = torch.einsum("ind,jnd->nij", unit, unit).square()  # [n, E, E]
    off_diagonal = squares.sum(dim=(1, 2)) - squares.diagonal(dim1=1, dim2=2).sum(dim=1)
    return off_diagonal.mean() / (E * (E - 1))
