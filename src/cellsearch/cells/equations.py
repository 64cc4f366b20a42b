"""The equation language: cells written in the paper's own notation, parsed to a `CellGraph` and
printed back.

    # The LSTM of §2, with the sigmoid output gate its authors trained (docs/fidelity.md)
    i  = tanh(W_xi x + W_hi h + b_i)
    j  = sigm(W_xj x + W_hj h + b_j)
    f  = sigm(W_xf x + W_hf h + b_f)
    o  = sigm(W_xo x + W_ho h + b_o)
    c' = c * f + i * j
    h' = tanh(c') * o
    init b_f = 1            # only in LSTM-b: the forget-gate bias starts at 1 (§2.2)

- `x` is the input; `h`, `c`, ... are the previous states; `h'`, `c'`, ... define the new states
  (a primed name may also be read, as `h'` reads `c'` above). `h` is the exposed output.
- `W_name v` applies a learned square matrix to `v` (a name, a call or a parenthesised
  expression); `b_name` is a learned bias vector; `1` is a vector of ones (`1 - z`).
- `tanh`, `sigm` (or `sigmoid`), `relu` and `id` are the activations; `*` (or `⊙`) is the
  elementwise product and binds tighter than `+` and `-`, which associate to the left.
- `init P = a` adds `a` to a bias's small random start (LSTM-b's "bias of 1"), or to a matrix's
  diagonal (the paper's `Linear(a, v)`).
- A line starting with `+`, `-` or `*` continues the previous equation, as the paper writes MUT1.
- A name starting with `_` is an anonymous node (the printer writes shared subexpressions so).

This module knows nothing of torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cellsearch.cells import ops
from cellsearch.cells.graph import (
    INPUT,
    MAX_DEPTH,
    CellGraph,
    GraphError,
    Node,
    is_anonymous,
)
from cellsearch.errors import UserError

# spelling -> op, and op -> its printed spelling, from the operation table
FUNCTIONS = {spelling: op.name for op in ops.OPERATIONS if op.kind == "activation"
             for spelling in (op.spelling, *op.aliases)}
FUNCTION_NAMES = {op.name: op.spelling for op in ops.OPERATIONS if op.kind == "activation"}
OPERATORS = {spelling: op.name for op in ops.OPERATIONS if op.kind == "elementwise"
             for spelling in (op.spelling, *op.aliases)}
SYMBOLS = {op.name: op.spelling for op in ops.OPERATIONS if op.kind == "elementwise"}
PRECEDENCE = {"add": 1, "sub": 1, "mul": 2}

_TOKEN = re.compile(
    r"(?P<space>[ \t]+)|(?P<comment>#.*)"
    r"|(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*~?'?)"
    r"|(?P<punct>[-+*⊙()=])"
)


class EquationError(UserError):
    """A malformed equation; the message starts with `line L, column C:`."""


@dataclass(frozen=True)
class _Token:
    kind: str  # name | number | punct | end
    text: str
    line: int
    column: int


def _tokenize(text: str) -> list[list[_Token]]:
    """Tokens per logical equation; continuation lines are joined to the line before."""
    equations: list[list[_Token]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens: list[_Token] = []
        position = 0
        while position < len(line):
            match = _TOKEN.match(line, position)
            if match is None:
                raise EquationError(
                    f"line {line_number}, column {position + 1}: unexpected character "
                    f"{line[position]!r}"
                )
            kind = match.lastgroup
            if kind not in ("space", "comment"):
                tokens.append(_Token(kind, match.group(), line_number, position + 1))
            position = match.end()
        if not tokens:
            continue
        if tokens[0].text in OPERATORS and equations:
            equations[-1].extend(tokens)
        else:
            equations.append(tokens)
    for tokens in equations:
        last = tokens[-1]
        tokens.append(_Token("end", "end of line", last.line, last.column + len(last.text)))
    return equations


class _Parser:
    """Recursive descent over one equation; builds nodes into the shared `nodes` list."""

    def __init__(self, tokens: list[_Token], nodes: list[Node], counter: list[int]):
        self.tokens = tokens
        self.position = 0
        self.nodes = nodes
        self.counter = counter
        self.depth = 0  # factors being parsed, one inside another
        self.references: list[_Token] = []  # the plain names read, to report undefined ones

    @property
    def current(self) -> _Token:
        return self.tokens[self.position]

    def fail(self, message: str, token: _Token | None = None) -> EquationError:
        token = token or self.current
        return EquationError(f"line {token.line}, column {token.column}: {message}")

    def take(self, text: str | None = None) -> _Token:
        token = self.current
        if text is not None and token.text != text:
            raise self.fail(f"expected {text!r} but found {token.text!r}")
        self.position += 1
        return token

    def emit(self, op: str, inputs: tuple[str, ...] = (), param: str | None = None) -> str:
        self.counter[0] += 1
        name = f"_#{self.counter[0]}"  # cannot clash with a typed name
        self.nodes.append(Node(name, op, inputs, param))
        return name

    def expression(self) -> str:
        left = self.term()
        while self.current.text in ("+", "-"):
            op = OPERATORS[self.take().text]
            left = self.emit(op, (left, self.term()))
        return left

    def term(self) -> str:
        left = self.factor()
        while self.current.text in ("*", "⊙"):
            self.take()
            left = self.emit("mul", (left, self.factor()))
        return left

    def factor(self) -> str:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.fail(f"nested more than {MAX_DEPTH} levels deep")
            return self._factor()
        finally:
            self.depth -= 1

    def _factor(self) -> str:
        token = self.current
        if token.text == "(":
            self.take()
            inner = self.expression()
            self.take(")")
            return inner
        if token.kind == "number":
            if float(token.text) != 1.0:
                raise self.fail(f"the only constant is 1, found {token.text}")
            self.take()
            return self.emit("one")
        if token.kind != "name":
            raise self.fail(f"expected a name, a call, '1' or '(' but found {token.text!r}")
        self.take()
        name = token.text
        if name.startswith(("W_", "b_")) and not name.isidentifier():
            raise self.fail(f"a parameter name is letters, digits and _, found {name!r}", token)
        if name.startswith("W_"):
            return self.emit("matmul", (self.factor(),), param=name)
        if name.startswith("b_"):
            return self.emit("bias", param=name)
        if name in FUNCTIONS:
            self.take("(")
            inner = self.expression()
            self.take(")")
            return self.emit(FUNCTIONS[name], (inner,))
        if name == "init":
            raise self.fail("'init' declarations stand on a line of their own")
        self.references.append(token)
        return name


def parse(text: str) -> CellGraph:
    """Parse equations (see the module docstring) into a validated `CellGraph`."""
    nodes: list[Node] = []
    counter = [0]
    defined: dict[str, _Token] = {}
    inits: list[tuple[_Token, float]] = []
    references: list[_Token] = []
    for tokens in _tokenize(text):
        parser = _Parser(tokens, nodes, counter)
        references = parser.references = references
        if tokens[0].text == "init":
            parser.take()
            target = parser.take()
            if target.kind != "name" or not target.text.startswith(("W_", "b_")):
                raise parser.fail("'init' names a matrix W_* or a bias b_*", target)
            parser.take("=")
            negative = parser.current.text == "-"
            if negative:
                parser.take()
            value = parser.take()
            if value.kind != "number":
                raise parser.fail(f"expected a number but found {value.text!r}", value)
            parser.take("end of line")
            inits.append((target, -float(value.text) if negative else float(value.text)))
            continue
        target = parser.take()
        if target.kind != "name" or target.text.startswith(("W_", "b_")) or target.text in FUNCTIONS:
            raise parser.fail(f"expected the name of the node being defined, found {target.text!r}",
                              target)
        if target.text == INPUT:
            raise parser.fail("x is the input and cannot be assigned", target)
        if target.text in defined:
            first = defined[target.text]
            raise parser.fail(f"{target.text} is already defined on line {first.line}", target)
        defined[target.text] = target
        parser.take("=")
        root = parser.expression()
        if parser.current.kind != "end":
            raise parser.fail(f"expected an operator or the end of the line, found "
                              f"{parser.current.text!r}")
        _name_root(nodes, root, target.text)
    for token in references:  # in the user's words, before the graph names anonymous nodes
        name = token.text
        if name not in defined and name != INPUT and not (
            not name.endswith("'") and f"{name}'" in defined
        ):
            hint = (
                f"; a state {name} needs its new value {name}' defined"
                if not name.endswith("'") else ""
            )
            raise EquationError(
                f"line {token.line}, column {token.column}: {name} is not defined{hint}"
            )
    nodes = _apply_inits(nodes, inits)
    try:
        return CellGraph(nodes)
    except GraphError as error:
        raise EquationError(_locate(str(error), defined)) from None


def _name_root(nodes: list[Node], root: str, name: str) -> None:
    """Give the equation's top node the defined name; a bare name becomes an identity node."""
    if nodes and nodes[-1].name == root and root.startswith("_#"):
        last = nodes.pop()
        nodes.append(Node(name, last.op, last.inputs, last.param))
    else:
        nodes.append(Node(name, "identity", (root,)))


def _apply_inits(nodes: list[Node], inits: list[tuple[_Token, float]]) -> list[Node]:
    by_param = {node.param: i for i, node in enumerate(nodes) if node.param is not None}
    for token, value in inits:
        if token.text not in by_param:
            raise EquationError(
                f"line {token.line}, column {token.column}: init names {token.text}, "
                "which no equation uses"
            )
        index = by_param[token.text]
        node = nodes[index]
        nodes[index] = Node(node.name, node.op, node.inputs, node.param, value)
    return nodes


def _locate(message: str, defined: dict[str, _Token]) -> str:
    """Prefix a graph error with the line of the first defined name it mentions."""
    for name, token in defined.items():
        if repr(name) in message:
            return f"line {token.line}, column {token.column}: {message}"
    return message


def parse_file(path: str | Path) -> CellGraph:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read cell file {path}: {error}") from None
    try:
        return parse(text)
    except EquationError as error:
        raise EquationError(f"{path}: {error}") from None


# -- printing -----------------------------------------------------------------------------------


def format_graph(graph: CellGraph) -> str:
    """Equations text that `parse` turns back into an equal graph.

    Anonymous nodes read once are written inline; named nodes and shared anonymous nodes get
    their own equation, in the graph's canonical (topological) order.
    """
    inline = _inlined(graph)
    definition = _printer(graph, inline)
    lines = []
    width = max((len(n.name) for n in graph.nodes if n.name not in inline), default=1)
    for node in graph.nodes:
        if node.name in inline:
            continue
        lines.append(f"{node.name.ljust(width)} = {definition(node)}")
    for node in graph.parameters:
        if node.init:
            value = node.init
            shown = str(int(value)) if float(value).is_integer() else repr(value)
            lines.append(f"init {node.param} = {shown}")
    return "\n".join(lines) + "\n"


def node_texts(graph: CellGraph) -> dict[str, str]:
    """Every node as the equations write it: `r = sigm(W_xr x + W_hr h + b_r)` for a named node,
    the expression alone for an anonymous one (which shared anonymous nodes name `_<i>`)."""
    definition = _printer(graph, _inlined(graph))
    return {node.name: definition(node) if is_anonymous(node.name)
            else f"{node.name} = {definition(node)}" for node in graph.nodes}


def _inlined(graph: CellGraph) -> set[str]:
    """The nodes printed inside their one reader's expression: anonymous nodes read once."""
    uses = graph.consumers()
    return {node.name for node in graph.nodes
            if is_anonymous(node.name) and len(uses[node.name]) == 1}


def _printer(graph: CellGraph, inline: set[str]):
    """`definition(node)`: a node's expression, with the `inline` nodes written out."""
    by_name = {node.name: node for node in graph.nodes}

    def expression(name: str, parent_precedence: int = 0, right_operand: bool = False,
                   body: bool = False) -> str:
        """`name`'s expression, or its name unless it is inlined (or `body` asks for it)."""
        if name not in by_name or (name not in inline and not body):
            return name
        node = by_name[name]
        if node.op == "one":
            return "1"
        if node.op == "bias":
            return node.param
        if node.op == "matmul":
            # Matrix application binds tightest: a sum or product operand needs parentheses.
            return f"{node.param} {expression(node.inputs[0], parent_precedence=3)}"
        if node.op in FUNCTION_NAMES:
            return f"{FUNCTION_NAMES[node.op]}({expression(node.inputs[0])})"
        precedence = PRECEDENCE[node.op]
        left = expression(node.inputs[0], precedence)
        right = expression(node.inputs[1], precedence, right_operand=True)
        text = f"{left} {SYMBOLS[node.op]} {right}"
        needs_parentheses = precedence < parent_precedence or (
            right_operand and precedence == parent_precedence
        )
        return f"({text})" if needs_parentheses else text

    def definition(node: Node) -> str:
        return expression(node.name, body=True)

    return definition
