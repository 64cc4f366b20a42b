"""Generated Triton kernels for a cell's elementwise work: one kernel per stretch of a timestep.

Between its matmuls an eager timestep runs every activation, product and sum as its own kernel,
forward and backward, each reading and writing whole (K, B, n) tensors: at the paper's sizes
that is ~30 small, memory-bound kernels per step. Here each stretch of elementwise work between
two matmul groups (an LSTM has one, a GRU two) becomes a `Segment`, and every segment becomes
two kernels generated from the graph: a forward that reads the segment's inputs once and writes
only what later steps read, and a backward that recomputes the forward values from the same
inputs (cheaper than storing them) and writes every input's gradient, a matmul group's whole
product in one buffer.

`step_fused` is a drop-in for `compile.step_eagerly` on CUDA; the matmuls and the per-sequence
weight gradients stay as they are. The derivatives are the ones torch uses (tanh: 1 - y²,
sigmoid: y(1 - y), relu: 0 at 0), so fused and eager steps agree to float rounding. The kernels
are written as Python source, keyed by their text, to a cache directory (Triton reads a kernel's
source from its file); Triton's own cache then keeps their binaries across runs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cellsearch.compile import MatmulGroup, Plan, Sum, group_product, static_sum_name
from cellsearch.graph import Node

BLOCK = 512


@dataclass(frozen=True)
class Read:
    """A segment reads value `name` from chunk `chunk` of argument `argument`."""

    name: str
    argument: int
    chunk: int


@dataclass(frozen=True)
class Segment:
    """Consecutive elementwise loop items. `arguments` are the tensors passed in: value names, or
    `@operand` for the whole product of the matmul group on that operand (`chunks` wide)."""

    items: tuple[Sum | Node, ...]
    arguments: tuple[str, ...]
    chunks: tuple[int, ...]
    reads: tuple[Read, ...]
    outputs: tuple[str, ...]  # values defined here that later steps or the new state read


def product_name(operand: str) -> str:
    return f"@{operand}"


@functools.lru_cache(maxsize=256)  # bounded: a long search meets thousands of graphs
def fused_loop(plan_: Plan) -> tuple[MatmulGroup | Segment, ...]:
    """`plan_.loop` with every run of elementwise items between matmul groups made a Segment."""
    fused_sums = {s for item in plan_.loop if isinstance(item, MatmulGroup)
                  for s in item.fused_sums if s is not None}
    chunk_of: dict[str, tuple[str, int]] = {}  # group member -> (product, chunk)
    width: dict[str, int] = {}  # product -> chunks
    runs: list[MatmulGroup | list] = []
    for item in plan_.loop:
        if isinstance(item, MatmulGroup):
            runs.append(item)
            width[product_name(item.operand)] = len(item.members)
            for index, member in enumerate(item.members):
                chunk_of[member] = (product_name(item.operand), index)
        elif runs and isinstance(runs[-1], list):
            runs[-1].append(item)
        else:
            runs.append([item])

    def later_reads(position: int) -> set[str]:
        names = set(plan_.graph.outputs)
        for later in runs[position + 1:]:
            for item in (later if isinstance(later, list) else [later]):
                names.update(_reads(item, fused_sums))
        return names

    loop: list[MatmulGroup | Segment] = []
    for position, run in enumerate(runs):
        if isinstance(run, MatmulGroup):
            loop.append(run)
            continue
        defined = {item.name for item in run}
        arguments: list[str] = []
        chunks: list[int] = []
        reads: list[Read] = []
        for item in run:
            for name in _reads(item, fused_sums):
                if name in defined or any(r.name == name for r in reads):
                    continue
                source, chunk = chunk_of.get(name, (name, 0))
                if source not in arguments:
                    arguments.append(source)
                    chunks.append(width.get(source, 1))
                reads.append(Read(name, arguments.index(source), chunk))
        needed = later_reads(position)
        loop.append(Segment(
            items=tuple(run),
            arguments=tuple(arguments),
            chunks=tuple(chunks),
            reads=tuple(reads),
            outputs=tuple(item.name for item in run if item.name in needed),
        ))
    return tuple(loop)


def _reads(item, fused_sums: set[str]) -> list[str]:
    if isinstance(item, MatmulGroup):
        return [item.operand]
    if isinstance(item, Sum):
        names = [term for _, term in item.recurrent_terms]
        if item.static_terms and item.name not in fused_sums:
            names.insert(0, static_sum_name(item.name))
        return names
    return list(item.inputs)


# -- code generation ------------------------------------------------------------------------------

_FORWARD = {
    # written with tl.exp: plain arithmetic, which Triton's CPU interpreter (the tests) runs too
    "tanh": "1.0 - 2.0 / (tl.exp(2.0 * {0}) + 1.0)",
    "sigmoid": "1.0 / (1.0 + tl.exp(-{0}))",
    "relu": "tl.maximum({0}, 0.0)",
    "identity": "{0}",
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
}
_ACTIVATION_GRADIENT = {  # in terms of the output y and its gradient g, as torch computes them
    "tanh": "{g} * (1.0 - {y} * {y})",
    "sigmoid": "{g} * {y} * (1.0 - {y})",
    "relu": "tl.where({y} > 0.0, {g}, 0.0)",
    "identity": "{g}",
}


def _signed_terms(item: Sum | Node, reads: dict) -> list[tuple[int, str]]:
    """An item as a signed sum of the values it reads, or [] if it is not a sum. A sum's static
    part is read unless its matmul group added it already."""
    if isinstance(item, Sum):
        static = static_sum_name(item.name)
        return [(1, static)] * (static in reads) + list(item.recurrent_terms)
    if item.op == "add":
        return [(1, item.inputs[0]), (1, item.inputs[1])]
    if item.op == "sub":
        return [(1, item.inputs[0]), (-1, item.inputs[1])]
    return []


def kernel_source(segment: Segment) -> str:
    """Python source of a module with `forward_kernel` and `backward_kernel` for `segment`."""
    var: dict[str, str] = {}
    for index, read in enumerate(segment.reads):
        var[read.name] = f"v{index}"
    for index, item in enumerate(segment.items):
        var[item.name] = f"y{index}"

    def load(pointer: str, offset: str) -> str:
        return f"tl.load({pointer} + {offset}, mask=mask, other=0.0)"

    def strided(argument: int, chunk: int) -> str:
        a = f"a{argument}"
        return f"k * {a}_sk + b * {a}_sb + (j + {chunk} * n) * {a}_sn"

    loads = [f"    {var[r.name]} = {load(f'a{r.argument}', strided(r.argument, r.chunk))}"
             for r in segment.reads]
    body = []
    for item in segment.items:
        terms = _signed_terms(item, var)
        if terms:
            expression = " ".join(
                f"{'+' if sign > 0 else '-'} {var[name]}" for sign, name in terms
            ).removeprefix("+ ")
            if expression.startswith("- "):
                expression = "-" + expression[2:]
        else:
            expression = _FORWARD[item.op].format(*(var[i] for i in item.inputs))
        body.append(f"    {var[item.name]} = {expression}")

    argument_parameters = ", ".join(
        f"a{i}, a{i}_sk, a{i}_sb, a{i}_sn" for i in range(len(segment.arguments)))
    index_lines = [
        "    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = idx < total",
        "    j = idx % n",
        "    r = idx // n",
        "    b = r % B",
        "    k = r // B",
    ]

    outputs = ", ".join(f"o{i}" for i in range(len(segment.outputs)))
    forward = [
        "@triton.jit",
        f"def forward_kernel({argument_parameters}, {outputs}, B, n, total, BLOCK: tl.constexpr):",
        *index_lines, *loads, *body,
        *(f"    tl.store(o{i} + idx, {var[name]}, mask=mask)"
          for i, name in enumerate(segment.outputs)),
    ]

    # Reverse mode over the segment: each value's gradient is the sum of its terms.
    terms: dict[str, list[str]] = {name: [] for name in var}
    gradient_loads = []
    for i, name in enumerate(segment.outputs):
        offset = f"k * go{i}_sk + b * go{i}_sb + j * go{i}_sn"
        gradient_loads.append(f"    d{i} = {load(f'go{i}', offset)}")
        terms[name].append(f"d{i}")
    gradient_body = []
    for item in reversed(segment.items):
        if not terms[item.name]:
            continue  # nothing after it depends on it
        g, y = f"g{var[item.name]}", var[item.name]
        gradient_body.append(f"    {g} = {' + '.join(terms[item.name])}")
        signed = _signed_terms(item, var)
        if signed:
            for sign, name in signed:
                terms[name].append(g if sign > 0 else f"(-{g})")
        elif item.op == "mul":
            a, b_ = item.inputs
            terms[a].append(f"{g} * {var[b_]}")
            terms[b_].append(f"{g} * {var[a]}")
        else:
            terms[item.inputs[0]].append(_ACTIVATION_GRADIENT[item.op].format(g=g, y=y))
    width = {i: f"{c} * n" for i, c in enumerate(segment.chunks)}
    gradient_stores = [
        f"    tl.store(ga{r.argument} + r * ({width[r.argument]}) + {r.chunk} * n + j, "
        f"{' + '.join(terms[r.name]) or 'tl.zeros([BLOCK], tl.float32)'}, mask=mask)"
        for r in segment.reads
    ]
    gradient_outputs = ", ".join(f"go{i}, go{i}_sk, go{i}_sb, go{i}_sn"
                                 for i in range(len(segment.outputs)))
    gradient_arguments = ", ".join(f"ga{i}" for i in range(len(segment.arguments)))
    backward = [
        "@triton.jit",
        f"def backward_kernel({argument_parameters}, {gradient_outputs}, {gradient_arguments}, "
        "B, n, total, BLOCK: tl.constexpr):",
        *index_lines, *loads, *body, *gradient_loads, *gradient_body, *gradient_stores,
    ]
    header = [
        "# Generated by cellsearch.fused from a cell graph; do not edit.",
        "import triton",
        "import triton.language as tl",
    ]
    return "\n".join([*header, "", "", *forward, "", "", *backward, ""])


# -- loading and launching ------------------------------------------------------------------------

_LOCK = threading.Lock()


def kernel_directory() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "cellsearch" / "kernels"


@functools.lru_cache(maxsize=256)
def _module(source: str, interpret: bool):  # interpret: only a cache key (see `kernels`)
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    directory = kernel_directory()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"segment_{digest}.py"
    if not path.exists():  # written whole, then renamed: another process may read it at once
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
            f.write(source)
        os.replace(f.name, path)
    spec = importlib.util.spec_from_file_location(f"cellsearch_segment_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_source = functools.lru_cache(maxsize=256)(kernel_source)


def kernels(segment: Segment):
    """The module holding the segment's two kernels (generated and loaded once per process;
    TRITON_INTERPRET=1, Triton's CPU interpreter, gets modules of its own)."""
    with _LOCK:
        return _module(_source(segment), os.environ.get("TRITON_INTERPRET") == "1")


def _strided(tensors, widths, K: int, B: int, n: int) -> list:
    """Kernel arguments: each tensor as (K, B, width * n) with its three strides; constants,
    (K, 1, n) or (1, 1, 1), broadcast with stride 0."""
    views = [t.expand(K, B, w * n) for t, w in zip(tensors, widths, strict=True)]
    return [v for view in views for v in (view, *view.stride())]


class _FusedSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, segment: Segment, shape: tuple[int, int, int], *arguments):
        K, B, n = shape
        _check_32bit_offsets(arguments, segment.chunks, K, B, n)
        outputs = [arguments[0].new_empty(K, B, n) for _ in segment.outputs]
        total = K * B * n
        kernels(segment).forward_kernel[(_blocks(total),)](
            *_strided(arguments, segment.chunks, K, B, n), *outputs, B, n, total, BLOCK=BLOCK)
        ctx.segment, ctx.shape = segment, (K, B, n)
        ctx.save_for_backward(*arguments)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        segment, (K, B, n) = ctx.segment, ctx.shape
        arguments = ctx.saved_tensors
        # A product chunk that this segment does not read gets no store: start those at zero.
        read_chunks = [sum(1 for r in segment.reads if r.argument == i)
                       for i in range(len(arguments))]
        grads = [
            (a.new_empty if read_chunks[i] == segment.chunks[i] else a.new_zeros)(
                K, B, segment.chunks[i] * n)
            for i, a in enumerate(arguments)
        ]
        total = K * B * n
        kernels(segment).backward_kernel[(_blocks(total),)](
            *_strided(arguments, segment.chunks, K, B, n),
            *_strided(grad_outputs, [1] * len(grad_outputs), K, B, n),
            *grads, B, n, total, BLOCK=BLOCK)
        return (None, None, *(g.sum_to_size(a.shape) if g.shape != a.shape else g
                        for g, a in zip(grads, arguments)))


def _check_32bit_offsets(arguments, widths, K: int, B: int, n: int) -> None:
    """The kernels index with 32-bit integers; far beyond what fits in GPU memory when training,
    but say so rather than read the wrong memory."""
    largest = max(sum((size - 1) * stride for size, stride in zip(a.shape, a.stride()))
                  for a in arguments)
    if max(largest, K * B * max(widths) * n) >= 2**31:
        raise ValueError(f"tensors too large for the fused kernels' 32-bit indexing "
                         f"(K={K}, B={B}, n={n}); use engine='eager'")


def _blocks(total: int) -> int:
    return -(-total // BLOCK)


def step_fused(
    plan_: Plan,
    weights: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    state: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """`compile.step_eagerly` with each elementwise segment run as one generated kernel."""
    graph = plan_.graph
    K, B, n = state[0].shape
    values: dict[str, torch.Tensor] = dict(zip(graph.states, state))
    values.update(inputs)
    for item in fused_loop(plan_):
        if isinstance(item, MatmulGroup):
            product = group_product(item, values, inputs, weights)
            values[product_name(item.operand)] = product
            values.update(zip(item.members, product.split(n, dim=-1)))
        else:
            results = _FusedSegment.apply(item, (K, B, n), *(values[a] for a in item.arguments))
            values.update(zip(item.outputs, results))
    return tuple(values[out].expand(K, B, n) for out in graph.outputs)


step_fused.records_weight_gradients = True


@functools.cache
def usable(device: str) -> bool:
    """Whether generated kernels work on `device`: Triton imports, and a short LSTM sequence
    through them gives the eager step's values and gradients. Checked once per process; when not,
    training falls back to the eager step with a warning rather than fail every run."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    from cellsearch import zoo
    from cellsearch.compile import plan, run, step_eagerly

    graph = zoo.get("lstm")

    def sequence(step):
        params = {node.param: torch.randn(2, 8, 8) if node.op == "matmul" else torch.randn(2, 8)
                  for node in graph.parameters}
        leaves = [torch.randn(2, 3, 4, 8), *params.values()]
        leaves = [t.to(device).requires_grad_() for t in leaves]
        x, params = leaves[0], dict(zip(params, leaves[1:]))
        state = tuple(torch.zeros(2, 4, 8, device=device) for _ in graph.states)
        outputs, _ = run(plan(graph), params, x, state, step)
        return [outputs, *torch.autograd.grad(outputs.square().sum(), leaves)]

    try:
        with torch.random.fork_rng(devices=[]):  # the same draws for both, nobody else's changed
            torch.manual_seed(0)
            eager = sequence(step_eagerly)
            torch.manual_seed(0)
            fused = sequence(step_fused)
        if all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(eager, fused)):
            return True
        problem = "they disagree with the eager step"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use them
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"generated Triton kernels are not usable on {device} ({problem}); "
                  "training uses the eager step", RuntimeWarning, stacklevel=2)
    return False
