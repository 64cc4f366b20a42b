"""From a parameter budget to a hidden size, by binary search on the exact parameter count (§3.7).

The paper treats the number of parameters as a hyperparameter ("250K or 1M" for ARITH and XML) and
"used binary search to select the appropriate number of units for a given number of parameters".
This module holds that count and that search for the model shape the trainer builds:

    input layer   "embedding": input_size * n              (a lookup table, no bias)
                  "linear":    input_size * n + n          (a projection of a dense input, e.g. music)
    cell layers   num_layers * (matrices_per_layer * n^2 + biases_per_layer * n)
    output layer  n * output_size + output_size            (softmax or sigmoid logits)

Every cell matrix is square (n, n) because the input layer maps the input to n units first; that
is why a cell is described here only by how many matrices and biases one layer has (LSTM: 8 and 4,
GRU: 6 and 3, Tanh RNN: 2 and 1). Counting those from a graph is the caller's job; this module
knows nothing of graphs or torch.
"""

from __future__ import annotations

from cellsearch.errors import UserError

INPUT_KINDS = ("embedding", "linear")


def parameter_count(
    hidden_size: int,
    *,
    matrices_per_layer: int,
    biases_per_layer: int,
    num_layers: int,
    input_size: int,
    output_size: int,
    input_kind: str,
) -> int:
    """The exact number of trainable parameters of the model described in the module docstring."""
    _check_int("hidden_size", hidden_size, minimum=1)
    _check_shape(matrices_per_layer, biases_per_layer, num_layers, input_size, output_size, input_kind)
    n = hidden_size
    input_layer = input_size * n + (n if input_kind == "linear" else 0)
    cell_layers = num_layers * (matrices_per_layer * n * n + biases_per_layer * n)
    output_layer = n * output_size + output_size
    return input_layer + cell_layers + output_layer


def hidden_size_for_budget(
    budget: int,
    *,
    matrices_per_layer: int,
    biases_per_layer: int,
    num_layers: int,
    input_size: int,
    output_size: int,
    input_kind: str,
) -> int:
    """The largest hidden size whose `parameter_count` is at most `budget`.

    Raises UserError when even one hidden unit needs more than `budget` parameters.
    """
    _check_int("budget", budget, minimum=1)
    shape = dict(
        matrices_per_layer=matrices_per_layer,
        biases_per_layer=biases_per_layer,
        num_layers=num_layers,
        input_size=input_size,
        output_size=output_size,
        input_kind=input_kind,
    )
    smallest = parameter_count(1, **shape)
    if smallest > budget:
        raise UserError(
            f"a parameter budget of {budget} is too small: even a hidden size of 1 needs "
            f"{smallest} parameters with input_size={input_size}, output_size={output_size}, "
            f"num_layers={num_layers}; use num_parameters >= {smallest}"
        )
    # The count grows strictly with n (the output layer alone adds output_size >= 1 per unit), so
    # the feasible sizes are exactly 1..answer. Invariant: count(low) <= budget < count(high).
    low, high = 1, 2
    while parameter_count(high, **shape) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if parameter_count(middle, **shape) <= budget:
            low = middle
        else:
            high = middle
    return low


def _check_shape(
    matrices_per_layer: int,
    biases_per_layer: int,
    num_layers: int,
    input_size: int,
    output_size: int,
    input_kind: str,
) -> None:
    _check_int("matrices_per_layer", matrices_per_layer, minimum=0)
    _check_int("biases_per_layer", biases_per_layer, minimum=0)
    _check_int("num_layers", num_layers, minimum=1)
    _check_int("input_size", input_size, minimum=1)
    _check_int("output_size", output_size, minimum=1)
    if input_kind not in INPUT_KINDS:
        raise UserError(f"unknown input_kind {input_kind!r}; expected one of {', '.join(INPUT_KINDS)}")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; True as a layer count is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
