"""Many unrelated batched matmuls in one launch, forward and backward: the products of a mixed
step outside its recurrence (`engine.products`), for populations of different cells and sizes.

Every product is a list of problems `C[k] = sum over segments s of A_s[k] @ B_s[k] (+ bias[k])`,
each operand read in place through its own address and strides, found by each program in a table
written anew each call (`tables.Table`, as `sgd.GroupedSGD`'s). Forward, a product's chunk is one
problem of one segment, written into its columns of the product. Backward, every gradient is one
problem: an input's sums the chunks that read it (one segment each), a matrix's is `x^T @ grad`
over the window's rows, a bias's sums the gradient's rows (an A at address 0 stands for ones;
summed in full precision, not in a TF32 product). So each round of a mixed step's products launches
one kernel forward and one backward (each after a copy of its table) whatever the number of
populations, where torch launches a few a population."""


from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from cellsearch.engine.kernels import codegen
from cellsearch.engine.kernels.tables import Table
from cellsearch.engine.products import Product, in_torch

BM, BN, BK = 64, 64, 32  # a program's tile of C, and the reduction's step
# A problem's table row: C's address and strides (member, row, column), M, N, the bias's
# address (0: none) and strides (member, column), its first segment and their count.
PROBLEM = tl.constexpr(11)
# A segment's: A's address (0: ones) and strides, B's address and strides, the reduction's
# length.
SEGMENT = tl.constexpr(9)


@triton.jit
def _pointer(address):
    return address.to(tl.pointer_type(tl.float32))


@triton.jit
def _products_kernel(table, problems_at, segments_at, PRECISION: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    program = table + tl.program_id(0).to(tl.int64) * 4  # (problem, member, first row, column)
    problem = table + problems_at + tl.load(program) * PROBLEM
    k = tl.load(program + 1)
    rows = tl.load(program + 2) + tl.arange(0, BM)
    cols = tl.load(program + 3) + tl.arange(0, BN)
    M, N = tl.load(problem + 4), tl.load(problem + 5)
    total = tl.zeros([BM, BN], tl.float32)
    segments = table + segments_at + tl.load(problem + 9) * SEGMENT
    for s in range(tl.load(problem + 10)):
        segment = segments + s * SEGMENT
        address = tl.load(segment)  # 0: A is ones (a bias's gradient sums the rows)
        a = _pointer(address) + k * tl.load(segment + 1)
        a_row, a_col = tl.load(segment + 2), tl.load(segment + 3)
        b = _pointer(tl.load(segment + 4)) + k * tl.load(segment + 5)
        b_row, b_col = tl.load(segment + 6), tl.load(segment + 7)
        length = tl.load(segment + 8)
        for start in range(0, length, BK):
            ks = start + tl.arange(0, BK)
            y = tl.load(b + ks[:, None] * b_row + cols[None, :] * b_col,
                        mask=(ks[:, None] < length) & (cols[None, :] < N), other=0.0)
            if address == 0:  # B's rows summed, in full precision
                total += tl.sum(y, 0)[None, :]
            else:
                x = tl.load(a + rows[:, None] * a_row + ks[None, :] * a_col,
                            mask=(rows[:, None] < M) & (ks[None, :] < length), other=0.0)
                total = tl.dot(x, y, total, input_precision=PRECISION)
    bias = tl.load(problem + 6)
    if bias != 0:
        total += tl.load(_pointer(bias) + k * tl.load(problem + 7) + cols * tl.load(problem + 8),
                         mask=cols < N, other=0.0)[None, :]
    c = _pointer(tl.load(problem)) + k * tl.load(problem + 1)
    tl.store(c + rows[:, None] * tl.load(problem + 2) + cols[None, :] * tl.load(problem + 3),
             total, mask=(rows[:, None] < M) & (cols[None, :] < N))


class Operand:
    """A (K, rows, columns) float32 operand as a table sees it: address and strides. Its
    transpose and column slices are the same memory seen otherwise."""

    def __init__(self, address: int, strides: tuple[int, int, int], rows: int, columns: int):
        self.address, self.strides, self.rows, self.columns = address, strides, rows, columns

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Operand:
        return cls(tensor.data_ptr(), tensor.stride(), *tensor.shape[1:])

    def transposed(self) -> Operand:
        member, row, column = self.strides
        return Operand(self.address, (member, column, row), self.columns, self.rows)

    def columns_of(self, start: int, width: int) -> Operand:
        return Operand(self.address + start * self.strides[2] * 4, self.strides, self.rows, width)


class Launch:
    """One launch of problems: each `add`ed (C, bias or None, [(A, B), ...]) for K members."""

    def __init__(self):
        self.problems: list[list[int]] = []
        self.segments: list[list[int]] = []
        self.programs: list[np.ndarray] = []

    def add(self, K: int, c: Operand, bias: Operand | None,
            segments: Sequence[tuple[Operand, Operand]]) -> None:
        M, N = c.rows, c.columns
        bias_row = [0, 0, 0] if bias is None else [bias.address, bias.strides[0], bias.strides[2]]
        self.problems.append([c.address, *c.strides, M, N, *bias_row, len(self.segments),
                              len(segments)])
        for a, b in segments:
            assert a.rows == M and b.columns == N and a.columns == b.rows
            self.segments.append([a.address, *a.strides, b.address, *b.strides, a.columns])
        grid = np.stack(np.meshgrid(np.arange(K), np.arange(0, M, BM), np.arange(0, N, BN),
                                    indexing="ij"), axis=-1).reshape(-1, 3)
        self.programs.append(np.column_stack([np.full(len(grid), len(self.problems) - 1), grid]))

    def table(self) -> tuple[np.ndarray, int, int]:
        """The programs', problems' and segments' rows in one int64 array, and where the
        problems and the segments start."""
        programs = np.concatenate(self.programs).astype(np.int64).ravel()
        problems = np.asarray(self.problems, dtype=np.int64).ravel()
        segments = np.asarray(self.segments, dtype=np.int64).ravel()
        return (np.concatenate([programs, problems, segments]), len(programs),
                len(programs) + len(problems))


def launch(problems: Launch, table: Table | None, device: torch.device, precision: str) -> None:
    if not problems.problems:
        return
    values, problems_at, segments_at = problems.table()
    on_device = (table or Table()).upload(values, device)
    _products_kernel[(problems_at // 4,)](
        on_device, problems_at, segments_at, PRECISION=precision, BM=BM, BN=BN, BK=BK)


def together(products: Sequence[Product], tables: dict | None = None, site=None
             ) -> list[torch.Tensor]:
    """Each product's value (`in_torch`'s), all in one launch (and backward one more). A step
    captured into a CUDA graph keeps the launches' tables for as long as the graph, one pair
    per call `site`, in `tables`. Float32 only; an input, a matrix and a bias are different
    tensors."""
    for p in products:
        K, _, d = p.x.shape
        shapes = [(tuple(w.shape), None if b is None else tuple(b.shape))
                  for w, b in zip(p.weights, p.biases, strict=True)]
        if any(w[:2] != (K, d) or b not in (None, (K, w[2])) for w, b in shapes):
            raise ValueError(f"a product's shapes disagree: x {tuple(p.x.shape)}, (weight, "
                             f"bias) {shapes}")
    tensors: list[torch.Tensor] = []
    places: dict[int, int] = {}  # id(tensor) -> its index: an input read twice is one tensor

    def place(tensor: torch.Tensor) -> int:
        if id(tensor) not in places:
            places[id(tensor)] = len(tensors)
            tensors.append(tensor)
        return places[id(tensor)]

    layout = tuple((place(p.x), tuple((place(w), None if b is None else place(b))
                                      for w, b in zip(p.weights, p.biases, strict=True)))
                   for p in products)
    roles = [{x for x, _ in layout}, {w for _, chunks in layout for w, _ in chunks},
             {b for _, chunks in layout for _, b in chunks if b is not None}]
    if sum(map(len, roles)) != len(tensors):
        raise ValueError("a tensor plays two roles (input, matrix, bias) in the products")
    if any(t.dtype != torch.float32 for t in tensors):
        raise ValueError(f"the products' kernel takes float32, got "
                         f"{sorted({str(t.dtype) for t in tensors})}")
    kept = None if tables is None else tables.setdefault(site, (Table(), Table()))
    return list(Products.apply(layout, kept, *tensors))


class Products(torch.autograd.Function):
    """`together`'s launches. `layout`: per product (its input's index among
    the tensors, and per chunk (its matrix's index, its bias's or None)); `tables`: the forward's
    and the backward's `Table`, or None (an eager call's own)."""

    @staticmethod
    def forward(ctx, layout, tables, *tensors):
        inputs = [tensors[i] for i, _ in layout]
        outputs = []
        problems = Launch()
        for (x_index, chunks), x in zip(layout, inputs):
            K, M, _ = x.shape
            width = sum(tensors[w].shape[2] for w, _ in chunks)
            out = x.new_empty(K, M, width)
            outputs.append(out)
            column = 0
            for w, b in chunks:
                n = tensors[w].shape[2]
                problems.add(K, Operand.of(out).columns_of(column, n),
                             None if b is None else Operand.of(tensors[b].unsqueeze(1)),
                             [(Operand.of(x), Operand.of(tensors[w]))])
                column += n
        launch(problems, tables and tables[0], x.device, codegen.matmul_precision(x))
        ctx.layout, ctx.tables = layout, tables
        ctx.save_for_backward(*tensors)
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        wanted = ctx.needs_input_grad[2:]
        # every use of a tensor: (the product's gradient's chunk, the chunk's input or matrix)
        uses: dict[int, list[tuple[Operand, int, int]]] = {}
        for (x_index, chunks), grad in zip(ctx.layout, grads):
            column = 0
            for w, b in chunks:
                n = tensors[w].shape[2]
                g = Operand.of(grad).columns_of(column, n)
                uses.setdefault(x_index, []).append((g, w, x_index))
                uses.setdefault(w, []).append((g, w, x_index))
                if b is not None:
                    uses.setdefault(b, []).append((g, w, x_index))
                column += n
        inputs = {x_index for x_index, _ in ctx.layout}
        biases = {b for _, chunks in ctx.layout for _, b in chunks if b is not None}
        result: list[torch.Tensor | None] = [None] * len(tensors)
        problems = Launch()
        for index, used in uses.items():
            if not wanted[index]:
                continue
            tensor = tensors[index]
            K = tensor.shape[0]
            out = torch.empty_like(tensor)
            result[index] = out
            if index in inputs:  # dx = sum over chunks of grad_c @ W_c^T
                problems.add(K, Operand.of(out), None,
                             [(g, Operand.of(tensors[w]).transposed()) for g, w, _ in used])
            elif index in biases:  # db = ones @ grad_c
                rows = used[0][0].rows
                problems.add(K, Operand.of(out.unsqueeze(1)), None,
                             [(Operand(0, (0, 0, 0), 1, rows), g) for g, _, _ in used])
            else:  # dW = x^T @ grad_c
                problems.add(K, Operand.of(out), None,
                             [(Operand.of(tensors[x]).transposed(), g) for g, _, x in used])
        launch(problems, ctx.tables and ctx.tables[1], grads[0].device,
               codegen.matmul_precision(grads[0]))
        return (None, None, *result)


@functools.cache
def usable(device: str) -> bool:
    """Whether the kernel works on `device`: two products, one of two chunks with a bias, one
    strided, give torch's values and gradients. Checked once per process; when not, says why in
    a warning."""
    try:
        generator = torch.Generator().manual_seed(0)
        leaves = [torch.randn(*shape, generator=generator).to(device).requires_grad_()
                  for shape in ((2, 70, 9), (2, 9, 5), (2, 9, 3), (2, 5), (1, 70, 4), (1, 6, 4))]
        x, w, v, b, y, u = leaves
        products = [Product(x, [w, v], [b, None]), Product(y, [u.transpose(1, 2)], [None])]

        def values_and_gradients(form):
            outputs = form(products)
            loss = sum((o * torch.arange(o.numel(), device=device).view_as(o).sin()).sum()
                       for o in outputs)
            return [*outputs, *torch.autograd.grad(loss, leaves)]

        pairs = zip(values_and_gradients(lambda ps: [in_torch(p) for p in ps]),
                    values_and_gradients(together))
        if all(torch.allclose(a, b, rtol=2e-2, atol=2e-3) for a, b in pairs):
            return True
        problem = "it disagrees with torch"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the grouped products' kernel is not usable on {device} ({problem}); each "
                  f"population's products launch on their own", RuntimeWarning, stacklevel=2)
    return False
