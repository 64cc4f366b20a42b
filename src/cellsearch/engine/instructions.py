"""The mixed engine's instruction set (`engine.mixed`): every activation and elementwise
operation of the operation table (`cells.ops`) as an opcode, and each one's reverse mode, which
both of its executors read: torch's (`mixed.TorchKernels`) and the generated Triton kernels'
(`kernels.mixed`). Torch only: importing it loads no Triton."""

from __future__ import annotations

from cellsearch.cells import ops

# The instruction set: every activation and elementwise operation of the table, in its order.
OPCODES = {op.name: code for code, op in enumerate(
    op for op in ops.OPERATIONS if op.kind in ("activation", "elementwise"))}
# The reverse mode of the binary operations, which the table leaves to each engine:
# (gradient of the first operand, of the second), from the output's gradient g and operands a, b.
BINARY_GRADIENTS = {"add": ("{g}", "{g}"), "sub": ("{g}", "-{g}"),
                    "mul": ("{g} * {b}", "{g} * {a}")}
assert set(ops.names("elementwise")) == set(BINARY_GRADIENTS), "a new binary op needs its gradient"



def gradients(name: str) -> tuple[str, str]:
    """The operation's reverse mode as the table's expressions: (first operand's, second's)."""
    operation = ops.BY_NAME[name]
    if operation.kind == "activation":
        return operation.triton_gradient.format(g="g", y="y"), "0.0 * g"  # (a tensor, in torch)
    return tuple(text.format(g="g", a="a", b="b") for text in BINARY_GRADIENTS[name])
