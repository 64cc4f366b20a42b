"""The batched matmuls of a window that need no recurrence: a layer's matrices applied to its
input, or to values formed from it alone, at every step at once (plus their constants), and the
output layer.

A mixed step (`mixed.run_mixed`, `train.model.forward_together`) forms those of all its
populations together (`mixed.form_products`): in torch one product after another (a few
launches each, forward and backward), on CUDA in one launch of `kernels.products` forward and
one backward, whatever the number of populations, cells and sizes. Same values to float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Product(NamedTuple):
    """`x @ [w_1 | w_2 | ...] + [b_1 | b_2 | ...]`, member by member: x (K, M, d), each w_c
    (K, d, n_c) with any strides, each b_c (K, n_c) or None (no constant); (K, M, sum n_c)."""

    x: torch.Tensor
    weights: Sequence[torch.Tensor]
    biases: Sequence[torch.Tensor | None]


def in_torch(product: Product) -> torch.Tensor:
    """The product's value in torch: one batched matmul, and one addition of its constants."""
    x, weights, biases = product
    out = torch.bmm(x, weights[0] if len(weights) == 1 else torch.cat(list(weights), dim=2))
    if any(b is not None for b in biases):
        constants = torch.cat([x.new_zeros(x.shape[0], w.shape[2]) if b is None else b
                               for w, b in zip(weights, biases)], dim=1)
        # Added in place: `baddbmm` with a broadcast addend first copies it into its whole
        # output, a slower pass (H100, arith's LSTM at K=512: 1.9 ms against 1.4 ms this way).
        out.add_(constants.unsqueeze(1))
    return out
