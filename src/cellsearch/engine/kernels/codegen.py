"""What the generated kernels share: a loop item's forward value and reverse mode as typed
statements, and writing, loading and launching a generated module.

Both generators (`fused`: a kernel per stretch of a step, `persistent`: a kernel per member for
the whole window) name a graph's values with kernel variables (`var`), form each loop item's
value with `forward_statement` and go backward with `gradient_statement`, which adds the
item's share of the gradient to each input's `Term`s. Every statement and term says which
kernel variables it reads, so a generator knows what the backward needs (the forward values it
must save or load) from the statements themselves. Given the graph's values as the equations
write them, every statement says which it computes (`cellsearch cells kernels`; see
`commenter`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from cellsearch import cache_directory
from cellsearch.cells import ops
from cellsearch.cells.graph import Node
from cellsearch.engine.plan import MatmulGroup, Plan, Sum, pre_name, static_sum_name

# From the operation table: each op's value, and an activation's input gradient in terms of its
# output y and that output's gradient g.
FORWARD = {op.name: op.triton for op in ops.OPERATIONS if op.triton}
ACTIVATION_GRADIENT = {op.name: op.triton_gradient for op in ops.OPERATIONS if op.triton_gradient}


@dataclass(frozen=True)
class Term:
    """One addend of a value's gradient: its text and the kernel variables it reads."""

    text: str
    reads: frozenset[str]


@dataclass(frozen=True)
class Statement:
    """`target = expression`, the kernel variables it reads, and (`comment`, "" for none) how
    the equations write the graph value it is about."""

    target: str
    expression: str
    reads: frozenset[str]
    comment: str = ""

    def line(self, indent: str) -> str:
        comment = f"  # {self.comment}" if self.comment else ""
        return f"{indent}{self.target} = {self.expression}{comment}"


Notes = Mapping[str, str] | None  # graph value -> as the equations write it; None: no comments


def commenter(notes: Notes):
    """`comment(name, prefix="")`: "  # <prefix><name as the equations write it>" to end a
    generated line with, or "" without notes. What is compiled carries none, so that segments of
    one structure share their compiled kernels whatever a graph calls its values."""
    if notes is None:
        return lambda name, prefix="": ""
    return lambda name, prefix="": f"  # {prefix}{notes.get(name, name)}"


def total(terms: list[Term]) -> str:
    """The sum of `terms` ("" when there are none)."""
    return " + ".join(term.text for term in terms)


def reads_of(terms: list[Term]) -> frozenset[str]:
    return frozenset().union(*(term.reads for term in terms))


def _signed_terms(item: Sum | Node, var: dict[str, str]) -> list[tuple[int, str]]:
    """An item as a signed sum of the values it reads, or [] if it is not a sum. A sum's static
    part is read unless its matmul group added it already (then `var` has no name for it)."""
    if isinstance(item, Sum):
        static = static_sum_name(item.name)
        return [(1, static)] * (static in var) + list(item.recurrent_terms)
    if item.op == "add":
        return [(1, item.inputs[0]), (1, item.inputs[1])]
    if item.op == "sub":
        return [(1, item.inputs[0]), (-1, item.inputs[1])]
    return []


def forward_statement(item: Sum | Node, var: dict[str, str], notes: Notes = None) -> Statement:
    """An item's value from the kernel variables `var` holding what it reads (`notes`: see
    `commenter`)."""
    terms = _signed_terms(item, var)
    if terms:
        expression = " ".join(
            f"{'+' if sign > 0 else '-'} {var[name]}" for sign, name in terms).removeprefix("+ ")
        expression = "-" + expression[2:] if expression.startswith("- ") else expression
        reads = frozenset(var[name] for _, name in terms)
    else:
        expression = FORWARD[item.op].format(*(var[i] for i in item.inputs))
        reads = frozenset(var[i] for i in item.inputs)
    return Statement(var[item.name], expression, reads, _comment(item.name, notes))


def gradient_statement(item: Sum | Node, var: dict[str, str], terms: dict[str, list[Term]],
                       notes: Notes = None) -> Statement | None:
    """Reverse mode through one item: the statement forming its gradient `g<var>` from its
    terms, after which each input's share is among the input's terms. None when nothing after
    the item depends on it."""
    if not terms[item.name]:
        return None
    g, y = f"g{var[item.name]}", var[item.name]
    signed = _signed_terms(item, var)
    if signed:
        for sign, name in signed:
            terms[name].append(Term(g if sign > 0 else f"(-{g})", frozenset({g})))
    elif item.op == "mul":
        a, b = item.inputs
        terms[a].append(Term(f"{g} * {var[b]}", frozenset({g, var[b]})))
        terms[b].append(Term(f"{g} * {var[a]}", frozenset({g, var[a]})))
    else:  # (the identity's gradient does not read its output)
        template = ACTIVATION_GRADIENT[item.op]
        reads = frozenset({g, y}) if "{y}" in template else frozenset({g})
        terms[item.inputs[0]].append(Term(template.format(g=g, y=y), reads))
    own = terms[item.name]
    return Statement(g, total(own), reads_of(own), _comment(item.name, notes, "d "))


def _comment(name: str, notes: Notes, prefix: str = "") -> str:
    return "" if notes is None else f"{prefix}{notes.get(name, name)}"


def fused_sum_names(plan_: Plan) -> set[str]:
    """The sums whose static parts their matmul groups add (so the loop does not read them)."""
    return {s for item in plan_.loop if isinstance(item, MatmulGroup)
            for s in item.fused_sums if s is not None}


def item_reads(item, fused_sums: set[str]) -> list[str]:
    """The values a loop item reads (`fused_sums`: `fused_sum_names`)."""
    if isinstance(item, MatmulGroup):
        return [item.operand]
    if isinstance(item, Sum):
        names = [term for _, term in item.recurrent_terms]
        if item.static_terms and item.name not in fused_sums:
            names.insert(0, static_sum_name(item.name))
        return names
    return list(item.inputs)


def input_width(name: str, plan_: Plan, n: int) -> int:
    """A step input's width: a group's m*n static addends, else n."""
    for item in plan_.loop:
        if isinstance(item, MatmulGroup) and name == pre_name(item.operand):
            return len(item.members) * n
    return n


# -- writing, loading and launching ----------------------------------------------------------------

_LOCK = threading.Lock()


def kernel_directory() -> Path:
    return cache_directory() / "kernels"


@functools.lru_cache(maxsize=256)
def _module(source: str, kind: str, interpret: bool):  # interpret: only a cache key
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    directory = kernel_directory()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}_{digest}.py"
    if not path.exists():  # written whole, then renamed: another process may read it at once
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
            f.write(source)
        os.replace(f.name, path)
    spec = importlib.util.spec_from_file_location(f"cellsearch_{kind}_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_module(source: str, kind: str):
    """The module of generated kernels with this source (written and loaded once per process;
    TRITON_INTERPRET=1, Triton's CPU interpreter, gets modules of its own). Triton reads a
    kernel's source from its file; Triton's cache keeps the binaries."""
    with _LOCK:
        return _module(source, kind, os.environ.get("TRITON_INTERPRET") == "1")


def strided(view: torch.Tensor) -> list:
    """A kernel's pointer argument followed by its strides."""
    return [view, *view.stride()]


def matmul_precision(reference: torch.Tensor) -> str:
    """tl.dot's precision: TF32 where torch's CUDA matmuls use it, so engines agree."""
    return "tf32" if reference.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def block_size(size: int) -> int:
    """The power of two that covers `size`, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << max(size - 1, 0).bit_length())


def check_first_backward(buffers) -> None:
    if buffers is None:  # released by the first backward
        raise RuntimeError("a fused layer's backward runs once per forward (retain_graph is not "
                           "supported); use engine='eager' to differentiate twice")
