"""Softmax cross-entropy over a population's logits in two Triton kernels (forward, backward).

At PTB's sizes the logits dominate a training step's memory traffic: (T, K, B, 10000) floats, 1.8
GB at K=64. Torch's path copies them into rows (the model's layout is (K, T, B, V) under a
transposed view), writes the log-softmax, reads it for the loss and for the argmax, and backward
fills a zero gradient, scatters into it and reads the log-softmax again. Here the forward reads
each row once (an online max and sum of exponentials, keeping the first argmax as torch does) and
keeps only the log-sum-exp per row; the backward reads the row once more and writes its gradient,
softmax − one-hot, scaled by the row's incoming gradient. The output layer's bias may be left to
the kernels, which add it as they read: a batched matmul adding a broadcast bias first copies the
bias into its whole output (PTB, K=64: 3.3 ms against 1.1 ms without it). Same values as
`F.cross_entropy(..., reduction="none")` and `argmax`, to float rounding.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from cellsearch.engine.kernels.tables import Table


@triton.jit
def _forward_kernel(logits, s_t, s_k, s_b, bias, s_bias, targets, nll, lse, hits, K, B, V,
                    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # t * B + b
    k = tl.program_id(1).to(tl.int64)
    t, b = row // B, row % B
    base = logits + t.to(tl.int64) * s_t + k * s_k + b.to(tl.int64) * s_b
    running_max = tl.full([], float("-inf"), tl.float32)
    total = tl.full([], 0.0, tl.float32)
    best = tl.full([], 0, tl.int32)
    for v0 in range(0, V, BLOCK):
        v = v0 + tl.arange(0, BLOCK)
        x = tl.load(base + v, mask=v < V, other=float("-inf")).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias + k * s_bias + v, mask=v < V, other=0.0)
        block_max = tl.max(x, 0)
        block_best = tl.argmax(x, 0, tie_break_left=True)
        best = tl.where(block_max > running_max, v0 + block_best, best)  # keeps the first
        new_max = tl.maximum(running_max, block_max)
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
        running_max = new_max
    log_total = running_max + tl.log(total)
    target = tl.load(targets + row)
    target_logit = tl.load(base + target).to(tl.float32)
    if HAS_BIAS:
        target_logit += tl.load(bias + k * s_bias + target)
    out = t * K * B + k * B + b  # (T, K, B)
    tl.store(nll + out, log_total - target_logit)
    tl.store(lse + out, log_total)
    tl.store(hits + out, (best == target).to(tl.float32))


@triton.jit
def _backward_kernel(logits, s_t, s_k, s_b, bias, s_bias, targets, lse, grad_nll, grad, K, B, V,
                     HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    k = tl.program_id(1).to(tl.int64)
    t, b = row // B, row % B
    offset = t.to(tl.int64) * s_t + k * s_k + b.to(tl.int64) * s_b  # grad has logits' strides
    out = t * K * B + k * B + b
    log_total = tl.load(lse + out)
    scale = tl.load(grad_nll + out)
    target = tl.load(targets + row)
    for v0 in range(0, V, BLOCK):
        v = v0 + tl.arange(0, BLOCK)
        x = tl.load(logits + offset + v, mask=v < V, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias + k * s_bias + v, mask=v < V, other=0.0)
        g = (tl.exp(x - log_total) - (v == target).to(tl.float32)) * scale
        tl.store(grad + offset + v, g, mask=v < V)


def _block(V: int) -> int:
    return min(2048, triton.next_power_of_2(V))


def _bias_arguments(bias: torch.Tensor | None, logits: torch.Tensor) -> tuple:
    """The kernels' bias pointer and row stride (without a bias, any pointer: it is not read)."""
    return (bias, bias.stride(0)) if bias is not None else (logits, 0)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None):
        T, K, B, V = logits.shape
        if logits.stride(3) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        if bias is not None and bias.stride(1) != 1:
            bias = bias.contiguous()
        nll, lse, hits = (logits.new_empty(T, K, B, dtype=torch.float32) for _ in range(3))
        _forward_kernel[(T * B, K)](logits, *logits.stride()[:3], *_bias_arguments(bias, logits),
                                    targets, nll, lse, hits, K, B, V, HAS_BIAS=bias is not None,
                                    BLOCK=_block(V))
        ctx.save_for_backward(logits, targets, lse, bias)
        ctx.mark_non_differentiable(hits)
        ctx.set_materialize_grads(False)  # (else hits' unused gradient is a fill of zeros)
        return nll, hits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_nll, _grad_hits):
        if grad_nll is None:  # (nll unused)
            return None, None, None
        logits, targets, lse, bias = ctx.saved_tensors
        T, K, B, V = logits.shape
        grad = torch.empty_strided(logits.shape, logits.stride(), dtype=logits.dtype,
                                   device=logits.device)
        _backward_kernel[(T * B, K)](logits, *logits.stride()[:3], *_bias_arguments(bias, logits),
                                     targets, lse, grad_nll.contiguous(), grad, K, B, V,
                                     HAS_BIAS=bias is not None, BLOCK=_block(V))
        return grad, None, (grad.sum(dim=(0, 2)) if bias is not None else None)


def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                          bias: torch.Tensor | None = None):
    """logits (T, K, B, V), strides of a non-overlapping layout with unit stride over V; targets
    (T, B) int64, each in [0, V) (not checked); bias (K, V) to add to the logits, or None. Returns
    (nll, hits), each (T, K, B): the cross-entropy of each prediction (differentiable) and whether
    its argmax is the target (the first maximum, as `torch.argmax`; unlike it, NaN is never the
    maximum: a diverged member's rows count no hit there, and their loss is NaN either way)."""
    return _SoftmaxCrossEntropy.apply(logits, targets, bias)


# -- every population of a mixed training step at once ------------------------------------------

# A member's table row: its logits' address and strides (t, member, b), its member index, its
# population's targets' and mask's addresses, B, and its gradient's address (backward).
_MEMBER = tl.constexpr(9)


@triton.jit
def _grouped_forward_kernel(table, nll, lse, M, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # t * B + b, the same window for every population
    m = tl.program_id(1).to(tl.int64)
    entry = table + m * _MEMBER
    B = tl.load(entry + 7)
    t, b = row // B, row % B
    base = (tl.load(entry).to(tl.pointer_type(tl.float32)) + t * tl.load(entry + 1)
            + tl.load(entry + 4) * tl.load(entry + 2) + b * tl.load(entry + 3))
    running_max = tl.full([], float("-inf"), tl.float32)
    total = tl.full([], 0.0, tl.float32)
    for v0 in range(0, V, BLOCK):
        v = v0 + tl.arange(0, BLOCK)
        x = tl.load(base + v, mask=v < V, other=float("-inf"))
        new_max = tl.maximum(running_max, tl.max(x, 0))
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
        running_max = new_max
    log_total = running_max + tl.log(total)
    target = tl.load(tl.load(entry + 5).to(tl.pointer_type(tl.int64)) + row)
    weight = tl.load(tl.load(entry + 6).to(tl.pointer_type(tl.float32)) + row)
    tl.store(nll + row * M + m, (log_total - tl.load(base + target)) * weight)
    tl.store(lse + row * M + m, log_total)


@triton.jit
def _grouped_backward_kernel(table, lse, grad_sums, M, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    entry = table + m * _MEMBER
    B = tl.load(entry + 7)
    t, b = row // B, row % B
    offset = t * tl.load(entry + 1) + tl.load(entry + 4) * tl.load(entry + 2) + b * tl.load(
        entry + 3)  # (the gradient has the logits' strides)
    logits = tl.load(entry).to(tl.pointer_type(tl.float32)) + offset
    grad = tl.load(entry + 8).to(tl.pointer_type(tl.float32)) + offset
    target = tl.load(tl.load(entry + 5).to(tl.pointer_type(tl.int64)) + row)
    scale = tl.load(grad_sums + m) * tl.load(tl.load(entry + 6).to(tl.pointer_type(tl.float32))
                                             + row)
    log_total = tl.load(lse + row * M + m)
    for v0 in range(0, V, BLOCK):
        v = v0 + tl.arange(0, BLOCK)
        x = tl.load(logits + v, mask=v < V, other=0.0)
        g = (tl.exp(x - log_total) - (v == target).to(tl.float32)) * scale
        tl.store(grad + v, g, mask=v < V)


class _GroupedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tables, *tensors):
        logits = tensors[0::3]
        T, _, B, V = logits[0].shape
        M = sum(x.shape[1] for x in logits)
        rows = _member_rows(tensors, grads=None)
        nll, lse = (logits[0].new_empty(T * B, M) for _ in range(2))
        _grouped_forward_kernel[(T * B, M)](tables[0].upload(rows, logits[0].device), nll, lse, M,
                                            V, BLOCK=_block(V))
        ctx.save_for_backward(lse, *tensors)
        ctx.tables = tables
        return nll.sum(dim=0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums):
        lse, *tensors = ctx.saved_tensors
        logits = tensors[0::3]
        T, _, B, V = logits[0].shape
        grads = [torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
                 for x in logits]
        rows = _member_rows(tensors, grads)
        _grouped_backward_kernel[(T * B, lse.shape[1])](
            ctx.tables[1].upload(rows, lse.device), lse, grad_sums.contiguous(), lse.shape[1], V,
            BLOCK=_block(V))
        return (None, *(value for grad in grads for value in (grad, None, None)))


def _member_rows(tensors, grads) -> np.ndarray:
    rows = []
    for p, (logits, targets, mask) in enumerate(zip(*[iter(tensors)] * 3)):
        grad = 0 if grads is None else grads[p].data_ptr()
        for k in range(logits.shape[1]):
            rows.append([logits.data_ptr(), *logits.stride()[:3], k, targets.data_ptr(),
                         mask.data_ptr(), logits.shape[2], grad])
    return np.asarray(rows, dtype=np.int64)


def grouped_loss_sums(logits: list[torch.Tensor], targets: list[torch.Tensor],
                      masks: list[torch.Tensor], tables: tuple | None = None) -> torch.Tensor:
    """Every member's masked loss over its window, (M,) in the populations' order, from the
    logits (T, K, B, V) of populations that share T, B and V, each with its targets (T, B)
    int64 and mask (T, B) float32: `softmax_stats(...)["loss_sum"]` of each, concatenated, in
    one launch each way (after its table's copy) where each population's loss launches a few.
    Float32 logits with unit stride over V, their bias already added. `tables`: the forward's and
    the backward's `tables.Table`, kept by a captured caller (default: each call its own)."""
    shapes = {(x.shape[0], x.shape[2], x.shape[3]) for x in logits}
    if len(shapes) != 1 or any(x.dtype != torch.float32 or x.stride(3) != 1 for x in logits):
        raise ValueError(f"grouped losses take float32 logits of one (T, B, V) with unit stride "
                         f"over V, got {sorted(shapes)}")
    tensors = []
    for x, y, mask in zip(logits, targets, masks, strict=True):
        tensors += [x, y.contiguous().to(torch.int64), mask.contiguous().to(torch.float32)]
    return _GroupedLoss.apply(tables or (Table(), Table()), *tensors)


@functools.cache
def grouped_usable(device: str) -> bool:
    """Whether `grouped_loss_sums` works on `device`: two populations' sums and gradients give
    `softmax_cross_entropy`'s. Checked once per process; when not, says why in a warning."""
    try:
        generator = torch.Generator().manual_seed(0)
        logits = [(torch.randn(K, 3, 4, 9, generator=generator)).transpose(0, 1).to(device)
                  for K in (2, 1)]
        targets = [torch.randint(0, 9, (3, 4), generator=generator).to(device) for _ in logits]
        masks = [(torch.rand(3, 4, generator=generator) > 0.3).float().to(device)
                 for _ in logits]
        results = []
        for grouped in (True, False):
            leaves = [x.clone().requires_grad_() for x in logits]
            sums = (grouped_loss_sums(leaves, targets, masks) if grouped else torch.cat(
                [(softmax_cross_entropy(x, y)[0] * mask.unsqueeze(1)).sum(dim=(0, 2))
                 for x, y, mask in zip(leaves, targets, masks)]))
            results.append([sums, *torch.autograd.grad(sums.square().sum(), leaves)])
        if all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*results)):
            return True
        problem = "it disagrees with the loss kernels"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the grouped loss is not usable on {device} ({problem}); each population's "
                  f"loss launches on its own", RuntimeWarning, stacklevel=2)
    return False
