"""Applying an other-experts projection to one stacked expert weight [E, out, in], without
ever forming a projector matrix: the statistics spaces act through the factors of
`projector.expert_factors`, `deltas` through the E x E mixing of `projector.direction_mixing`.

An orthogonal step computes `products` of the weight before AdamW's step and after it; the
products are linear in the weight and small, so their difference gives the products of the
update without materialising it, and `subtract` removes the projected-away part in place."""

import torch

from .projector import direction_mixing, removed_part, update_products


def stat_dtype(p: torch.Tensor) -> torch.dtype:
    """Projector maths run in fp32 at least, whatever the parameters' precision."""
    return torch.promote_types(p.dtype, torch.float32)


def as_rows(W: torch.Tensor, space: str) -> torch.Tensor:
    """W [E, out, in] as [E, rows, dim] whose rows a statistics space's projector [dim x dim]
    acts on: W itself in the input spaces (right-multiplied), W^T for outputs
    (left-multiplied). Its own inverse."""
    return W.transpose(1, 2) if space == "outputs" else W


class Projection:
    """One stacked expert weight's other-experts projection in a statistics space: the
    factors [E, dim, R] of `expert_factors`, acting on `as_rows` of the weight."""

    def __init__(self, factors: torch.Tensor, mode: str, space: str) -> None:
        self.factors, self.mode, self.space = factors, mode, space
        self.dtype = factors.dtype

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The small products of W [E, out, in] with the factors (linear in W)."""
        return update_products(as_rows(W.to(self.dtype), self.space), self.factors, self.mode)

    def removed(self, products: tuple[torch.Tensor, ...], shape: torch.Size) -> torch.Tensor:
        """What the projection removes from the W (of this shape) whose `products` these are."""
        return as_rows(removed_part(products, self.factors, self.mode), self.space)

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        """W [E, out, in] projected."""
        return W - self.removed(self.products(W), W.shape)

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        """W -= what the projection removes from the W' whose `products` these are."""
        W.sub_(self.removed(products, W.shape).to(W.dtype))


class DirectionProjection(Projection):
    """One stacked expert weight's projection away from the other experts' directions in
    weight space (`--omoe-space deltas`): the experts' first moments [E, out * in] made unit
    rows (a copy: AdamW's step then updates the moments in place) and the mixing matrices of
    `direction_mixing`. Every pass over weight-sized tensors counts here (one orthogonal
    step makes five), so finiteness is read off the E x E Gram matrix, which a NaN or Inf
    anywhere in the moments reaches."""

    def __init__(self, moments: torch.Tensor, alpha: float, mode: str) -> None:
        gram = moments @ moments.T
        self.finite = bool(torch.isfinite(gram).all())
        if not self.finite:
            return
        inv_norms = gram.diagonal().sqrt().clamp(min=1e-12).reciprocal()  # F.normalize's eps
        self.directions = moments * inv_norms[:, None]
        self.dtype = moments.dtype
        unit_gram = gram * inv_norms[:, None] * inv_norms[None, :]
        self.mixing = direction_mixing(unit_gram, alpha, mode).to(self.dtype)

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (W.to(self.dtype).reshape(W.size(0), -1) @ self.directions.T,)  # [E, E]

    def _coefficients(self, products: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.einsum("eij,ej->ei", self.mixing, products[0])  # [E, E]

    def removed(self, products: tuple[torch.Tensor, ...], shape: torch.Size) -> torch.Tensor:
        return (self._coefficients(products) @ self.directions).reshape(shape)

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        if W.dtype != self.dtype or not W.is_contiguous():
            return super().subtract(products, W)
        W.view(W.size(0), -1).addmm_(self._coefficients(products), self.directions, alpha=-1)
