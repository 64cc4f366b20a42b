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

`GroupedSGD` updates many populations at once, as a mixed step's (`steps.MixedSteps`) must: in
three launches whatever their number, where the torch update launches about eight per
population, plus a copy of every gradient that autograd leaves strided (a group's matrices,
concatenated for one product; a narrow population's corner of a mix's padded matrices). Each
program finds its gradient through a table of addresses and strides, filled anew each call.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from cellsearch.engine.kernels.tables import Table

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


# -- many populations at once ---------------------------------------------------------------------

# A gradient's table row: address, strides (member, row, column), rows, columns, then its
# parameter's address and member stride (a member's elements contiguous).
ITEM = tl.constexpr(8)
SCALE_CHUNK = 1024  # block sums a scale's program adds per pass


@triton.jit
def _gradient_block(item, k, start, BLOCK: tl.constexpr):
    """Member k's gradient elements start.. of table row `item` (non-finite ones as 0), their
    indexes and mask."""
    grad = tl.load(item).to(tl.pointer_type(tl.float32))
    columns = tl.load(item + 5)
    offsets = start + tl.arange(0, BLOCK)
    mask = offsets < tl.load(item + 4) * columns
    g = tl.load(grad + k * tl.load(item + 1) + offsets // columns * tl.load(item + 2)
                + offsets % columns * tl.load(item + 3), mask=mask, other=0.0)
    return tl.where(tl.abs(g) < float("inf"), g, 0.0), offsets, mask


@triton.jit
def _grouped_square_sums_kernel(programs, items, sums, BLOCK: tl.constexpr):
    program = programs + tl.program_id(0).to(tl.int64) * 4  # (item, member, start, sum slot)
    g, _, _ = _gradient_block(items + tl.load(program) * ITEM, tl.load(program + 1),
                              tl.load(program + 2), BLOCK)
    tl.store(sums + tl.load(program + 3), tl.sum(g * g, 0))


@triton.jit
def _grouped_scales_kernel(sums, members, scales, width, CHUNK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    member = members + m * 3  # (its rate's address, its max norm's, its count of block sums)
    count = tl.load(member + 2)
    total = tl.zeros((CHUNK,), tl.float32)
    for start in range(0, count, CHUNK):
        offsets = start + tl.arange(0, CHUNK)
        total += tl.load(sums + m * width + offsets, mask=offsets < count, other=0.0)
    norm = tl.sqrt(tl.sum(total, 0))
    rate = tl.load(tl.load(member).to(tl.pointer_type(tl.float32)))
    max_norm = tl.load(tl.load(member + 1).to(tl.pointer_type(tl.float32)))
    tl.store(scales + m, rate * tl.minimum(max_norm / (norm + 1e-6), 1.0))


@triton.jit
def _grouped_update_kernel(programs, items, scales, width, BLOCK: tl.constexpr):
    program = programs + tl.program_id(0).to(tl.int64) * 4
    item, k = items + tl.load(program) * ITEM, tl.load(program + 1)
    g, offsets, mask = _gradient_block(item, k, tl.load(program + 2), BLOCK)
    param = tl.load(item + 6).to(tl.pointer_type(tl.float32)) + k * tl.load(item + 7) + offsets
    scale = tl.load(scales + tl.load(program + 3) // width)
    tl.store(param, tl.load(param, mask=mask) - scale * g, mask=mask)


class GroupedSGD:
    """The clipped SGD of several populations, each with its own parameters, learning rates and
    max norms, in three launches (and one copy of a small table) whatever their number; the same
    update as `clipped_sgd_` per population. Built once for the populations (each parameter
    (K, ...) float32 with each member's elements contiguous, as `steps`' flat parameters are;
    rates and norms (K,) tensors that stay put), then called with every population's gradients
    in turn, in its parameters' order."""

    def __init__(self, populations: Sequence[tuple[Sequence[torch.Tensor], torch.Tensor,
                                                    torch.Tensor]]):
        self.parameters = [p for parameters, _, _ in populations for p in parameters]
        if any(p.dtype != torch.float32 or not p[0].is_contiguous() for p in self.parameters):
            raise ValueError("grouped SGD takes float32 parameters, each member's contiguous")
        # (the tables below hold the rates' and norms' addresses: kept alive with them)
        self.rates = [(rates, max_norms) for _, rates, max_norms in populations]
        programs, members, first = [], [], 0  # programs: (item, member k, start, m, its count)
        for parameters, rates, max_norms in populations:
            for k in range(rates.shape[0]):
                count = 0
                for index, p in enumerate(parameters, start=first):
                    for start in range(0, p[0].numel(), BLOCK):
                        programs.append((index, k, start, len(members), count))
                        count += 1
                members.append([_address(rates, k), _address(max_norms, k), count])
            first += len(parameters)
        device = self.parameters[0].device
        self.width = max(count for _, _, count in members)  # block sums a member, at most
        # each program's block sum goes to slot (m, count) of rows of `width`
        self.programs = torch.tensor([(i, k, s, m * self.width + c) for i, k, s, m, c in programs],
                                     dtype=torch.int64, device=device)
        self.members = torch.tensor(members, dtype=torch.int64, device=device)
        self.sums = torch.empty(len(members) * self.width, device=device)
        self.scales = torch.empty(len(members), device=device)
        self.table = Table()  # the gradients', written each call

    def __call__(self, grads: Sequence[torch.Tensor | None]) -> None:
        items = self._items(grads)
        _grouped_square_sums_kernel[(len(self.programs),)](self.programs, items, self.sums,
                                                           BLOCK=BLOCK)
        _grouped_scales_kernel[(len(self.members),)](self.sums, self.members, self.scales,
                                                     self.width, CHUNK=SCALE_CHUNK)
        _grouped_update_kernel[(len(self.programs),)](self.programs, items, self.scales,
                                                      self.width, BLOCK=BLOCK)

    def _items(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The gradients' table on the device. Their addresses change from call to call, but
        for a captured step's replays, which copy the table written when it was captured."""
        rows = []
        for p, g in zip(self.parameters, grads, strict=True):
            if g is None:  # no gradient: no elements (its block sums are 0)
                rows.append([0, 0, 0, 0, 0, 1, p.data_ptr(), p.stride(0)])
                continue
            if g.dtype != torch.float32 or g.shape != p.shape:
                raise ValueError(f"a gradient {g.dtype} {tuple(g.shape)} for a parameter "
                                 f"{p.dtype} {tuple(p.shape)}")
            g = g.unsqueeze(1) if g.dim() == 2 else g if g.dim() == 3 else g.reshape(len(g), 1, -1)
            rows.append([g.data_ptr(), *g.stride(), *g.shape[1:], p.data_ptr(), p.stride(0)])
        return self.table.upload(np.array(rows, dtype=np.int64), self.parameters[0].device)


def _address(tensor: torch.Tensor, index: int) -> int:
    return tensor.data_ptr() + index * tensor.stride(0) * tensor.element_size()


@functools.cache
def grouped_usable(device: str) -> bool:
    """Whether `GroupedSGD` works on `device`: two small populations, one clipped, a gradient
    strided, give the torch update's parameters. Checked once per process; when not, says why
    in a warning."""
    try:
        generator = torch.Generator().manual_seed(0)
        populations, expected = [], []
        for K, shape, max_norm in ((2, (3, 5), 1e3), (1, (4,), 1.0)):  # the second clipped
            parameters = torch.randn(K, *shape, generator=generator).to(device)
            grad = torch.randn(K, *shape[::-1], generator=generator).to(device).transpose(1, -1)
            rates = torch.full((K,), 0.5, device=device)
            max_norms = torch.full((K,), max_norm, device=device)
            norms = grad.flatten(1).norm(dim=1)
            scale = rates * torch.clamp(max_norms / (norms + 1e-6), max=1.0)
            expected.append(parameters - scale.view(-1, *[1] * len(shape)) * grad)
            populations.append(([parameters], rates, max_norms, grad))
        GroupedSGD([(ps, r, n) for ps, r, n, _ in populations])([g for *_, g in populations])
        if all(torch.allclose(ps[0], e, rtol=1e-4, atol=1e-6)
               for (ps, *_), e in zip(populations, expected)):
            return True
        problem = "it disagrees with torch's update"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the grouped SGD kernels are not usable on {device} ({problem}); each "
                  f"population of a mixed step takes its own update", RuntimeWarning, stacklevel=2)
    return False
