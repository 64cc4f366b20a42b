"""The population's clipped SGD update in Triton kernels, reading each gradient where autograd
left it.

Per member k: p[k] -= rate[k] * g[k] * min(1, max_norm[k] / (|g[k]| + 1e-6)), |g[k]| over all of
member k's parameters, with non-finite gradient elements counted and applied as 0 (a diverged
member stays put and cannot disturb the others' norms). Torch's way (`steps`: the eager engine, and
populations too small for these kernels to pay, `steps.SGD_KERNEL_PARAMETERS`) first concatenates
every gradient into one (K, P) row per member, then zeroes non-finite elements, takes the norms and
applies the update: four passes over P floats a member, two of them writing. Here one kernel per
gradient sums its squares per block of a row (no concatenation, no zeroing pass) and one per
gradient applies the update, so a step reads each gradient twice and writes only the parameters: at
arith's K=512 (128M parameters) or PTB's K=64 (300M) that is most of the update's memory traffic.
The block sums add up in a fixed order, so the update is deterministic. Same values as the torch
code to float rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096  # gradient elements per program


@triton.jit
def _square_sums_kernel(grad, grad_row, size, sums, sums_row, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(grad + k * grad_row + offsets, mask=offsets < size, other=0.0)
    g = tl.where(tl.abs(g) < float("inf"), g, 0.0)  # NaN and ±inf count as 0
    tl.store(sums + k * sums_row + block, tl.sum(g * g, 0))


@triton.jit
def _update_kernel(param, param_row, grad, grad_row, size, scale, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < size
    g = tl.load(grad + k * grad_row + offsets, mask=mask, other=0.0)
    g = tl.where(tl.abs(g) < float("inf"), g, 0.0)
    p = tl.load(param + k * param_row + offsets, mask=mask)
    tl.store(param + k * param_row + offsets, p - tl.load(scale + k) * g, mask=mask)


def clipped_sgd_(flat_parameters: torch.Tensor, sizes: list[int], grads: list[torch.Tensor | None],
                 learning_rates: torch.Tensor, max_norms: torch.Tensor) -> None:
    """Update `flat_parameters` (K, P), whose columns hold the parameters of `sizes` one after
    another, with `grads` (each (K, ...) or None: no gradient, nothing to do) as the module
    docstring says; `learning_rates` and `max_norms` are (K,)."""
    K = flat_parameters.shape[0]
    rows = [None if g is None else _rows(g, K) for g in grads]
    blocks = [triton.cdiv(size, BLOCK) for size in sizes]
    sums = flat_parameters.new_zeros(K, sum(blocks))
    column = 0
    for row, size, count in zip(rows, sizes, blocks):
        if row is not None:
            _square_sums_kernel[(K, count)](row, row.stride(0), size, sums[:, column:],
                                            sums.stride(0), BLOCK=BLOCK)
        column += count
    norms = sums.sum(dim=1).sqrt_()
    scale = learning_rates * torch.clamp(max_norms / (norms + 1e-6), max=1.0)
    offset = 0
    for row, size, count in zip(rows, sizes, blocks):
        if row is not None:
            _update_kernel[(K, count)](flat_parameters[:, offset:], flat_parameters.stride(0), row,
                                       row.stride(0), size, scale, BLOCK=BLOCK)
        offset += size


def _rows(grad: torch.Tensor, K: int) -> torch.Tensor:
    """`grad` as (K, size) rows whose elements are contiguous (the kernels step rows only)."""
    rows = grad.reshape(K, -1)
    return rows if rows.stride(1) == 1 else rows.contiguous()
