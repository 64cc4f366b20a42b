"""Every operation a cell graph may hold, in one table that the IR, the equation language, the
mutations, the drawings and each engine derive theirs from: a new activation is one entry here.

An engine reads what it runs from its own columns: `torch_function` (the eager step), and
`triton` / `triton_gradient` (the generated kernels), written with `tl.exp` and plain arithmetic
so that Triton's CPU interpreter runs them too. Derivatives are the ones torch uses (tanh:
1 - y², sigmoid: y(1 - y), relu: 0 at 0), so the engines agree to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operation:
    name: str  # as the IR names it
    kind: str  # "parameter", "constant", "activation" or "elementwise"
    spelling: str = ""  # as the equations print it (an activation's function, an operator)
    aliases: tuple[str, ...] = ()  # other spellings the equations accept
    label: str = ""  # in drawings (default: the spelling)
    commutative: bool = False
    mutation: bool = False  # §3.2 (1): one of the activations a mutation may put in
    torch_function: str | None = None  # `torch.<name>`; None: the identity
    triton: str | None = None  # the forward value from operands {0}, {1}
    triton_gradient: str | None = None  # an activation's input gradient from output {y}, its {g}

    @property
    def arity(self) -> int:
        return {"parameter": 1 if self.name == "matmul" else 0, "constant": 0,
                "activation": 1, "elementwise": 2}[self.kind]


OPERATIONS = (
    # W v, a learned (n, n) matrix; its `init` is added to the diagonal (Linear(a, .))
    Operation("matmul", "parameter"),
    Operation("bias", "parameter"),  # b, a learned (n,) vector starting at `init`
    Operation("one", "constant", label="1"),  # the constant vector of ones, for `1 - z`
    Operation("tanh", "activation", "tanh", mutation=True, torch_function="tanh",
              triton="1.0 - 2.0 / (tl.exp(2.0 * {0}) + 1.0)",
              triton_gradient="{g} * (1.0 - {y} * {y})"),
    Operation("sigmoid", "activation", "sigm", ("sigmoid",), mutation=True,
              torch_function="sigmoid", triton="1.0 / (1.0 + tl.exp(-{0}))",
              triton_gradient="{g} * {y} * (1.0 - {y})"),
    Operation("relu", "activation", "relu", mutation=True, torch_function="relu",
              triton="tl.maximum({0}, 0.0)", triton_gradient="tl.where({y} > 0.0, {g}, 0.0)"),
    Operation("identity", "activation", "id", ("identity",), triton="{0}",
              triton_gradient="{g}"),
    Operation("add", "elementwise", "+", commutative=True, triton="{0} + {1}"),
    Operation("sub", "elementwise", "-", label="−", triton="{0} - {1}"),
    Operation("mul", "elementwise", "*", ("⊙",), label="⊙", commutative=True,
              triton="{0} * {1}"),
)
BY_NAME = {op.name: op for op in OPERATIONS}


def names(kind: str) -> tuple[str, ...]:
    """The operations of one kind, in the table's order."""
    return tuple(op.name for op in OPERATIONS if op.kind == kind)


def label(name: str) -> str:
    op = BY_NAME[name]
    return op.label or op.spelling or op.name
