"""OWM projector maths for OMoE, as pure functions (the algorithm is written out in the README,
*The algorithm as implemented*).

Notation: A (in x t) holds, as columns, the (normalised) inputs an expert has seen, so its
input second moment is C = A A^T. With alpha > 0 the OWM projector is

    P = I - A (A^T A + alpha I)^{-1} A^T = alpha (C + alpha I)^{-1}

and OWM builds it recursively: after new inputs X (in x b),

    P <- P - P X (alpha I_b + X^T P X)^{-1} X^T P.

P keeps directions the expert has not seen and damps each seen direction with eigenvalue
lambda of C to alpha / (lambda + alpha). The optimizer never forms P: it stores the factor
Q (in x t) with P = I - Q Q^T, Q = A L^{-T} where L L^T = A^T A + alpha I, so memory and the
cost of projecting an update grow with t, not with in^2.

The dense forms (`projector`, `projector_update`, `covariance_projector`) are the reference
the factored form is tested against; they are O(in^2) and meant for small dimensions.
"""

from typing import Optional

import torch

Mode = str  # --omoe-mode: "joint" or "average" (settings.OMoESettings.mode)


def covariance_projector(C: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha (C + alpha I)^{-1} for a second-moment matrix C (in x in)."""
    eye = torch.eye(C.size(0), dtype=C.dtype, device=C.device)
    return alpha * torch.linalg.inv(C + alpha * eye)


def projector(A: torch.Tensor, alpha: float) -> torch.Tensor:
    """The dense OWM projector I - A (A^T A + alpha I)^{-1} A^T of inputs A (in x t)."""
    eye_t = torch.eye(A.size(1), dtype=A.dtype, device=A.device)
    eye = torch.eye(A.size(0), dtype=A.dtype, device=A.device)
    return eye - A @ torch.linalg.solve(A.T @ A + alpha * eye_t, A.T)


def projector_update(P: torch.Tensor, X: torch.Tensor, alpha: float) -> torch.Tensor:
    """OWM's rank-b recursion: the projector after also seeing inputs X (in x b)."""
    PX = P @ X
    eye_b = torch.eye(X.size(1), dtype=X.dtype, device=X.device)
    return P - PX @ torch.linalg.solve(alpha * eye_b + X.T @ PX, PX.T)


def _factor(gram: torch.Tensor, A: torch.Tensor) -> Optional[torch.Tensor]:
    """A L^{-T} with L L^T = gram, or None where the Cholesky fails (gram not positive
    definite in this precision: alpha too small, or inputs too large) or the factor is not
    finite."""
    L, info = torch.linalg.cholesky_ex(gram)
    if info.item() != 0:
        return None
    Q = torch.linalg.solve_triangular(L, A.T, upper=False).T
    return Q if torch.isfinite(Q).all() else None


def projector_factor(A: torch.Tensor, alpha: float) -> torch.Tensor:
    """Q (in x t) with I - Q Q^T equal to `projector(A, alpha)`, by one Cholesky solve."""
    eye_t = torch.eye(A.size(1), dtype=A.dtype, device=A.device)
    Q = _factor(A.T @ A + alpha * eye_t, A)
    if Q is None:
        raise ValueError(f"no projector factor: A^T A + {alpha} I is not positive definite "
                         f"in {A.dtype} or A is not finite")
    return Q


def compress(A: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` stand-in for A: A' (in x rank, zero-padded) with A' A'^T the
    truncated eigen-decomposition of A A^T. Exact and deterministic; the eigenproblem is
    solved on the smaller of A^T A (t x t) and A A^T (in x in)."""
    in_dim, cols = A.shape
    if cols <= rank:
        return torch.cat([A, A.new_zeros(in_dim, rank - cols)], dim=1)
    if cols <= in_dim:
        _, V = torch.linalg.eigh(A.T @ A)  # ascending eigenvalues
        return A @ V[:, -rank:]
    evals, U = torch.linalg.eigh(A @ A.T)
    kept = min(rank, in_dim)
    top = U[:, -kept:] * evals[-kept:].clamp(min=0).sqrt()
    return torch.cat([top, A.new_zeros(in_dim, rank - kept)], dim=1)


def fold_columns(stats: torch.Tensor, X: torch.Tensor, rank: int) -> Optional[torch.Tensor]:
    """Statistics [dim, rank] with new columns X [dim, w] folded in (`compress` of both), or
    None if X or the result is not finite or the eigen-decomposition fails."""
    if not torch.isfinite(X).all():
        return None
    try:
        folded = compress(torch.cat([stats, X], dim=1), rank)
    except torch.linalg.LinAlgError:
        return None
    return folded if torch.isfinite(folded).all() else None


def expert_factors(
    stats: torch.Tensor, alpha: float, mode: Mode
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of every expert's other-experts projector, from all experts' inputs.

    stats: [E, in, r], expert e's inputs as columns (second moment stats[e] stats[e]^T).
    Returns (Q, ok): Q [E, in, R] such that

    - mode "joint":   I - Q[e] Q[e]^T = alpha (C - C_e + alpha I)^{-1}, C = sum_j C_j: the
      projector onto what is orthogonal to the span of all other experts' inputs together;
      R = (E - 1) r.
    - mode "average": I - Q[e] Q[e]^T = P_e, each expert's own projector; the other
      experts' average (S - P_e) / (E - 1) is formed by `project`; R = r.
    With a single expert there is no other expert: R = 0 and every projector is I.

    ok [E] (bool) is False for an expert whose factor could not be formed (Cholesky failure
    or non-finite result, see `_factor`); its Q is zero (the identity projector), and the
    caller decides what to keep instead. Both modes factor blocks of one Gram matrix of all
    experts' inputs, computed once: O(in (E r)^2 + E (E r)^3), not E full rebuilds. The
    factorisation runs in float64 whatever the statistics' precision (it is small, and once
    per cycle): in fp32 a Gram matrix of duplicated experts' inputs plus a small alpha is
    not positive definite (alpha = 1e-9 vanishes next to 1).
    """
    E, in_dim, r = stats.shape
    ok = torch.ones(E, dtype=torch.bool)
    if E == 1:
        return stats.new_zeros(1, in_dim, 0), ok  # no other expert: P_{-e} = I
    A = stats.double().permute(1, 0, 2).reshape(in_dim, E * r)  # [in, E r], expert-major
    gram = A.T @ A + alpha * torch.eye(E * r, dtype=A.dtype, device=A.device)
    blocks = torch.arange(E * r, device=A.device).view(E, r)
    width = r if mode == "average" else (E - 1) * r
    factors = stats.new_zeros(E, in_dim, width)  # the statistics' dtype
    for e in range(E):
        cols = (blocks[e] if mode == "average"  # its own inputs, or all the others'
                else torch.cat([blocks[:e], blocks[e + 1 :]]).flatten())
        Q = _factor(gram[cols][:, cols], A[:, cols])
        if Q is None:
            ok[e] = False
        else:
            factors[e] = Q
    return factors, ok


def mean_trace(factors: torch.Tensor, mode: Mode) -> float:
    """Mean over experts of trace(P_{-e}) / dim for the factors of `expert_factors`:
    1 = projects nothing, 0 = everything."""
    E, dim = factors.shape[:2]
    norms = factors.square().sum(dim=(1, 2))  # ||Q_e||_F^2 = dim - trace(I - Q Q^T)
    if mode == "average" and E > 1:  # trace of (S - P_e) / (E - 1)
        norms = (norms.sum() - norms) / (E - 1)
    return float(1.0 - norms.mean() / dim)


def update_products(delta: torch.Tensor, factors: torch.Tensor, mode: Mode,
                    everyone: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """The small part of projecting delta [E, out, in]: its products with the factors.

    everyone: every expert's factors where delta and factors are one worker's share of the
    experts (expert parallelism; mode "average" mixes them all); None: factors.
    Linear in delta, so products(new) - products(old) = products(new - old): the optimizer
    projects an update without ever holding the update itself."""
    if mode == "joint":
        return (delta @ factors,)  # [E, out, R]
    everyone = factors if everyone is None else everyone
    Q_all = everyone.permute(1, 0, 2).reshape(everyone.size(1), -1)  # [in, E r]
    return delta @ Q_all, delta @ factors  # [E, out, E r], [E, out, r]


def removed_part(products: tuple[torch.Tensor, ...], factors: torch.Tensor, mode: Mode,
                 everyone: Optional[torch.Tensor] = None) -> torch.Tensor:
    """delta (I - P_{-e}) for every expert, from `update_products(delta)`: what the
    projection removes."""
    if mode == "joint":
        return products[0] @ factors.transpose(1, 2)
    # P_{-e} = (S - P_e) / (E - 1) = I - (sum_{j != e} Q_j Q_j^T) / (E - 1), S = sum_j P_j
    everyone = factors if everyone is None else everyone
    Q_all = everyone.permute(1, 0, 2).reshape(everyone.size(1), -1)
    seen_by_all, seen_by_self = products
    return (seen_by_all @ Q_all.T - seen_by_self @ factors.transpose(1, 2)) / (everyone.size(0) - 1)


def project(delta: torch.Tensor, factors: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Right-multiply every expert's update by its other-experts projector.

    delta: [E, out, in] (update or gradient of a stacked expert weight); factors: from
    `expert_factors`. joint: delta[e] (I - Q_e Q_e^T). average: delta[e] (S - P_e) / (E - 1),
    from the stacked factors once for all experts (O(E), no per-expert sum over the others).
    """
    if factors.size(-1) == 0:
        return delta  # no other expert: P_{-e} = I
    return delta - removed_part(update_products(delta, factors, mode), factors, mode)


def direction_mixing(gram: torch.Tensor, alpha: float, mode: Mode) -> torch.Tensor:
    """Projectors away from the other experts' directions in weight space, in mixing form.

    gram: [E, E] the Gram matrix U U^T of one unit direction u_j per expert (the rows of U; a
    zero row for an expert with none). Returns M [E, E, E] such that expert e's vector w is
    projected to w - U^T M[e] U w:

    - mode "joint": P_{-e} = I - U_{-e}^T (U_{-e} U_{-e}^T + alpha I)^{-1} U_{-e}, the OWM
      projector of the other experts' directions together (M[e] is that inverse, zero in
      row and column e);
    - mode "average": P_{-e} = (sum_j P_j - P_e) / (E - 1) with P_j = I - u_j u_j^T / (1 + alpha),
      each direction's own OWM projector (M[e] diagonal).
    Only the E x E Gram matrix is factorised (float64): nothing of the directions' size is
    formed.
    """
    E = gram.size(0)
    mixing = torch.zeros(E, E, E, dtype=torch.float64, device=gram.device)
    if E == 1:
        return mixing  # no other expert: P_{-e} = I
    gram = gram.double()
    eye = torch.eye(E - 1, dtype=torch.float64, device=gram.device)
    for e in range(E):
        others = torch.cat([torch.arange(e), torch.arange(e + 1, E)])
        if mode == "joint":
            block = torch.linalg.inv(gram[others][:, others] + alpha * eye)
        else:
            block = eye / ((1 + alpha) * (E - 1))
        mixing[e, others.unsqueeze(1), others] = block
    return mixing
