"""Applying an other-experts projection to one stacked expert weight [E, out, in], without
ever forming a projector matrix: the statistics spaces act through the factors of
`projector.expert_factors`, `deltas` through the E x E mixing of `projector.direction_mixing`.

An orthogonal step computes `products` of the weight before AdamW's step and after it; the
products are linear in the weight and small, so their difference gives the products of the
update without materialising it, and `subtract` removes the projected-away part in place."""

from typing import Callable

import torch

from .projector import direction_mixing, removed_part, update_products


def row_products(A: torch.Tensor, B: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """A [E, N] @ B [F, N]^T for a few long rows (the experts' flattened weights), as one
    batched product over chunks of N, summed. A plain matmul of this shape runs on one
    thread (about twice as slow on two cores) and sums each entry over N in one running sum;
    the chunks run in parallel, stay in cache, and sum pairwise."""
    E, N = A.shape
    chunks = N // chunk
    if chunks < 2 or A.stride(1) != 1 or B.stride(1) != 1:
        return A @ B.T
    head = torch.bmm(A.as_strided((chunks, E, chunk), (chunk, A.stride(0), 1)),
                     B.as_strided((chunks, chunk, B.size(0)), (chunk, 1, B.stride(0)))).sum(0)
    tail = chunks * chunk
    return head if tail == N else head + A[:, tail:] @ B[:, tail:].T


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

    strength = 1.0  # the share of the projected-away part that is removed (linear in it)

    def __init__(self, factors: torch.Tensor, mode: str, space: str,
                 local: slice = slice(None)) -> None:
        """factors: every expert's; local: the experts of the weights projected (a worker's
        share under expert parallelism; all of them otherwise)."""
        self.factors, self.everyone, self.mode, self.space = factors[local], factors, mode, space
        self.dtype = factors.dtype

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The small products of W [E, out, in] with the factors (linear in W), scaled by
        the strength: everything removed is linear in them."""
        return self._scaled(update_products(as_rows(W.to(self.dtype), self.space),
                                            self.factors, self.mode, self.everyone))

    def _scaled(self, products: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return products if self.strength == 1.0 else tuple(self.strength * p for p in products)

    def removed(self, products: tuple[torch.Tensor, ...], shape: torch.Size) -> torch.Tensor:
        """What the projection removes from the W (of this shape) whose `products` these are."""
        return as_rows(removed_part(products, self.factors, self.mode, self.everyone),
                       self.space)

    def removed_norm(self, products: tuple[torch.Tensor, ...], shape: torch.Size,
                     norm: Callable[[torch.Tensor], torch.Tensor] = torch.norm) -> torch.Tensor:
        """The Frobenius norm of `removed(products, shape)` (norm: of a shard's rows taken
        with the other workers' under expert parallelism)."""
        return norm(self.removed(products, shape))

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
        gram = self._gram(moments)
        self.finite = bool(torch.isfinite(gram).all())
        if not self.finite:
            return
        inv_norms = gram.diagonal().sqrt().clamp(min=1e-12).reciprocal()  # F.normalize's eps
        self.directions = moments * inv_norms[:, None]
        self.dtype = moments.dtype
        self.unit_gram = gram * inv_norms[:, None] * inv_norms[None, :]
        self.mixing = direction_mixing(self.unit_gram, alpha, mode).to(self.dtype)

    def _gram(self, moments: torch.Tensor) -> torch.Tensor:
        return row_products(moments, moments)

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        W = W.to(self.dtype).reshape(W.size(0), -1)
        return self._scaled((row_products(W, self.directions),))  # [E, E]

    def _coefficients(self, products: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.einsum("eij,ej->ei", self.mixing, products[0])  # [E, E]

    def removed(self, products: tuple[torch.Tensor, ...], shape: torch.Size) -> torch.Tensor:
        return (self._coefficients(products) @ self.directions).reshape(shape)

    def removed_norm(self, products: tuple[torch.Tensor, ...], shape: torch.Size,
                     norm=None) -> torch.Tensor:
        # ||K U||_F^2 = trace(K (U U^T) K^T) with the unit directions' Gram matrix: no pass
        # over the directions (K holds every expert's row, sharded or not)
        K = self._coefficients(products)
        return torch.einsum("ei,ij,ej->", K, self.unit_gram, K).clamp(min=0).sqrt()

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        if W.dtype != self.dtype or not W.is_contiguous():
            return super().subtract(products, W)
        W.view(W.size(0), -1).addmm_(self._coefficients(products), self.directions, alpha=-1)
