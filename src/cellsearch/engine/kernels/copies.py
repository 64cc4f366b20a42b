"""Many strided copies in one launch: how the mixed engine's window (`engine.mixed`) moves every
population's tensors into its slots and out again, where torch launches a copy a tensor.

Each copy (`Copies.add`) is a destination and a source of the same shape, up to five dimensions,
each read in place through its own address and strides (a broadcast source has stride 0), found
by each program in a table written anew each call (`tables.Table`, as `products`' and
`sgd.GroupedSGD`'s). A copy may add to its destination instead, and may write zeros where a
mask (bool, broadcast to the shape through its strides) is set: the rows of a carried state that
start afresh. Integers and booleans are copied as they are (a window's tokens and flags). The
copies of a launch run at once: no destination may overlap another copy's destination or
source."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from cellsearch.engine.kernels import codegen
from cellsearch.engine.kernels.tables import Table

BLOCK = 1024  # a program's elements
DIMS = 5
# A copy's table row: destination, source and mask addresses (mask 0: none), add (0 or 1), the
# number of elements, then per dimension (outermost first) its size, the destination's, the
# source's and the mask's strides.
COPY = 5 + 4 * DIMS
KINDS = {torch.float32: 0, torch.float64: 1, torch.int64: 2, torch.bool: 3}  # (bool as bytes)

SOURCE = f'''"""cellsearch.engine.kernels.copies' kernel."""
import triton
import triton.language as tl


@triton.jit
def copies_kernel(table, copies_at, KIND: tl.constexpr, BLOCK: tl.constexpr):
    program = table + tl.program_id(0).to(tl.int64) * 2  # (copy, first element)
    copy = table + copies_at + tl.load(program) * {COPY}
    index = tl.load(program + 1) + tl.arange(0, BLOCK).to(tl.int64)
    inside = index < tl.load(copy + 4)
    destination = tl.full([BLOCK], 0, tl.int64)
    source = tl.full([BLOCK], 0, tl.int64)
    masked = tl.full([BLOCK], 0, tl.int64)
    rest = index
    for d in tl.static_range({DIMS}):  # innermost first
        at = copy + 5 + 4 * ({DIMS - 1} - d)
        size = tl.load(at)
        position = rest % size
        rest = rest // size
        destination += position * tl.load(at + 1)
        source += position * tl.load(at + 2)
        masked += position * tl.load(at + 3)
    if KIND == 0:
        kind = tl.pointer_type(tl.float32)
    elif KIND == 1:
        kind = tl.pointer_type(tl.float64)
    elif KIND == 2:
        kind = tl.pointer_type(tl.int64)
    else:
        kind = tl.pointer_type(tl.int8)
    value = tl.load(tl.load(copy + 1).to(kind) + source, mask=inside)
    target = tl.load(copy).to(kind) + destination
    if KIND < 2:  # (masks and additions are for floats)
        mask = tl.load(copy + 2)
        if mask != 0:
            zeroed = tl.load(mask.to(tl.pointer_type(tl.int8)) + masked, mask=inside, other=0)
            value = tl.where(zeroed != 0, 0.0, value)
        if tl.load(copy + 3) != 0:
            value += tl.load(target, mask=inside, other=0.0)
    tl.store(target, value, mask=inside)
'''


class Copies:
    """The copies of one launch, `add`ed in turn; `launch` runs them (in torch with
    `in_torch`: the kernel's reference, and a CPU's way)."""

    def __init__(self):
        self.copies: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]] = []

    def add(self, destination: torch.Tensor, source: torch.Tensor,
            zero_where: torch.Tensor | None = None, add: bool = False) -> None:
        """destination = source (or += with `add`), zeros where `zero_where` is set; `source`
        and `zero_where` broadcast to the destination's shape."""
        if destination.dim() > DIMS:
            raise ValueError(f"a copy has at most {DIMS} dimensions, got {destination.dim()}")
        self.copies.append((destination, source, zero_where, add))

    def launch(self, table: Table | None = None, in_torch: bool = False) -> None:
        if not self.copies:
            return
        if in_torch:
            for destination, source, zero_where, add in self.copies:
                if zero_where is not None:
                    source = torch.where(zero_where, 0.0, source)
                if add:
                    destination.add_(source)
                else:
                    destination.copy_(source)
            return
        dtypes = {t.dtype for d, s, _, _ in self.copies for t in (d, s)}
        if dtypes - set(KINDS) or len(dtypes) > 1:
            raise ValueError(f"the copies' kernel takes one of {', '.join(map(str, KINDS))} a "
                             f"launch, got {sorted(str(dtype) for dtype in dtypes)}")
        [dtype] = dtypes
        if KINDS[dtype] >= 2 and any(z is not None or a for _, _, z, a in self.copies):
            raise ValueError(f"masked and added copies are for floats, not {dtype}")
        rows, programs = [], []
        for index, (destination, source, zero_where, add) in enumerate(self.copies):
            shape = destination.shape
            count = destination.numel()
            source = source.expand(shape)
            mask = zero_where.expand(shape) if zero_where is not None else None
            row = [destination.data_ptr(), source.data_ptr(),
                   0 if mask is None else mask.data_ptr(), int(add), count]
            row += [1, 0, 0, 0] * (DIMS - len(shape))  # (leading dimensions of one)
            for d, size in enumerate(shape):
                row += [size, destination.stride(d), source.stride(d),
                        0 if mask is None else mask.stride(d)]
            rows.append(row)
            starts = np.arange(0, count, BLOCK)
            programs.append(np.column_stack([np.full(len(starts), index), starts]))
        programs = np.concatenate(programs).astype(np.int64).ravel()
        if not len(programs):  # (nothing but empty tensors)
            return
        values = np.concatenate([programs, np.asarray(rows, dtype=np.int64).ravel()])
        device = self.copies[0][0].device
        on_device = (table or Table()).upload(values, device)
        codegen.load_module(SOURCE, "copies").copies_kernel[(len(programs) // 2,)](
            on_device, len(programs), KIND=KINDS[dtype], BLOCK=BLOCK)



@functools.cache
def usable(device: str) -> bool:
    """Whether the kernel works on `device`: a launch of each kind, strided and broadcast,
    copies as torch does. Checked once per process; when not, says why in a warning."""
    try:
        for dtype in KINDS:
            source = (torch.arange(-30, 30) * 10**10).view(3, 4, 5).to(dtype).to(device)
            ours, theirs = (torch.zeros(4, 3, 6, dtype=dtype, device=device) for _ in range(2))
            copies = Copies()
            copies.add(ours[:3].transpose(0, 1)[:, :, 1:], source[:, :3])  # (strided)
            copies.add(ours[3, :, 1:], source[0, :1].t().expand(5, 3).t())  # (broadcast)
            copies.launch()
            theirs[:3].transpose(0, 1)[:, :, 1:].copy_(source[:, :3])
            theirs[3, :, 1:].copy_(source[0, :1].t().expand(5, 3).t())
            if not torch.equal(ours, theirs):
                raise AssertionError(f"{dtype}: it disagrees with torch")
        return True
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the copies' kernel is not usable on {device} ({problem}); each tensor is "
                  f"copied on its own", RuntimeWarning, stacklevel=2)
    return False
