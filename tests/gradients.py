"""Gradient comparisons shared by the exactness tests of the injector and its terms."""

from __future__ import annotations

import torch

Grads = dict[str, torch.Tensor]
ATOL, RTOL = 1e-6, 1e-5  # float32 sums in another order, not a different loss


def assert_grads_equal(got: Grads, want: Grads, *, atol: float = ATOL, rtol: float = RTOL) -> None:
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(
            got[name], want[name], atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}"
        )


def max_difference(a: Grads, b: Grads) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)
