"""Applying projections: the chunked products of a few long rows."""

import pytest
import torch

from omoe_plugin.optim.projection import row_products


@pytest.mark.parametrize("E, F, N, chunk", [(4, 4, 64, 8), (4, 3, 70, 8), (2, 5, 15, 8),
                                             (4, 4, 589_824, 8192)])
def test_row_products_are_the_matrix_product(E, F, N, chunk):
    """Whole chunks, a remainder, fewer than two chunks (the plain product), MiniLM's fc1."""
    gen = torch.Generator().manual_seed(N)
    A, B = torch.randn(E, N, generator=gen), torch.randn(F, N, generator=gen)
    expected = A.double() @ B.double().T
    got = row_products(A, B, chunk)
    assert got.shape == (E, F) and got.dtype == A.dtype
    torch.testing.assert_close(got.double(), expected, atol=1e-3 * N**0.5, rtol=0)


def test_row_products_of_views():
    """Rows of a larger tensor (a stride other than the row length) and a transposed
    operand (not row-contiguous) give the same products."""
    base = torch.randn(6, 100, dtype=torch.float64)
    A, B = base[1:5, 10:90], torch.randn(80, 3, dtype=torch.float64).T
    torch.testing.assert_close(row_products(A, B, 16), A @ B.T)
    torch.testing.assert_close(row_products(A, A, 16), A @ A.T)
