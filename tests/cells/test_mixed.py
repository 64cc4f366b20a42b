"""The mixed engine (`engine.mixed`) against the eager one: layers of different cells, population
sizes and hidden sizes run together give each layer the outputs, final state and gradients that
`plan.run` gives it alone."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.cells.equations import parse
from cellsearch.cells.mutate import mutate
from cellsearch.engine import instructions, mixed
from cellsearch.engine.kernels import mixed as step_kernels
from cellsearch.engine.mixed import Layer, compile_program, run_mixed
from cellsearch.engine.plan import plan, run

from .random_graphs import direct_output_graphs
from .random_graphs import graphs as random_graphs
from .sequences import assert_same
from .test_fused import SHAPED

pytestmark = [  # random graphs saturate and overflow on purpose, as in test_fused
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def layer(graph, K, n, seed, T=4, B=3):
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    params = {node.param: leaf(K, n, n) if node.op == "matmul" else leaf(K, n)
              for node in graph.parameters}
    return Layer(plan(graph), params, leaf(K, T, B, n), tuple(leaf(K, B, n) for _ in graph.states))


def values_and_gradients(layers, runner):
    """Per layer: outputs, final states, then the gradient of every leaf, of one loss that weighs
    every output and final state of every layer differently."""
    results = runner(layers)
    loss = sum((outputs * torch.linspace(-1, 1, outputs.shape[-1], dtype=torch.float64)).sum()
               + sum((f * f).sum() for f in final) for outputs, final in results)
    leaves = [t for lay in layers for t in (lay.x, *lay.state, *lay.params.values())]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    values = [v for outputs, final in results for v in (outputs, *final)]
    return values + [g if g is not None else torch.zeros(()) for g in grads]


def alone(layers):
    return [run(lay.plan, lay.params, lay.x, lay.state) for lay in layers]


def together(kernel):
    return lambda layers: run_mixed(layers, kernel=kernel)


def mix(graphs, seed=0, **shape):
    rng = random.Random(seed)
    return [layer(graph, rng.randint(1, 3), rng.randint(2, 7), seed * 100 + i, **shape)
            for i, graph in enumerate(graphs)]


def mutants(count):
    return [mutate(zoo.get("gru" if i % 2 else "mut3"), random.Random(i)).graph
            for i in range(count)]


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the kernel module is loaded


@pytest.fixture(params=["triton", "persistent"])
def kernel(request, interpreted):
    """The Triton kernels, in Triton's interpreter: a stage at a time, or the whole window."""
    return request.param


def test_the_zoo_together_matches_each_cell_alone():
    layers = mix([zoo.get(name) for name in zoo.names()])
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together("torch")))


def test_the_kernel_matches_each_cell_alone(kernel):
    layers = mix([zoo.get(name) for name in zoo.names()] + mutants(4), seed=1)
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together(kernel)))


def test_the_kernel_across_several_blocks_of_a_slot(kernel):
    # B * N = 9 * 130 > 1024: two programs per member, the second ending in padding
    layers = [layer(zoo.get("gru"), 2, 130, 0, T=2, B=9), layer(zoo.get("lstm"), 1, 70, 1, T=2, B=9)]
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together(kernel)))


def test_shapes_the_zoo_lacks_together():
    layers = mix([parse(text) for text in SHAPED.values()] + mutants(8), seed=2)
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together("torch")))


@settings(max_examples=20, deadline=None)
@given(graphs=st.lists(st.one_of(random_graphs, direct_output_graphs), min_size=1, max_size=4),
       seed=st.integers(0, 1000))
def test_random_graphs_together(graphs, seed):
    layers = mix(graphs, seed)
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together("torch")))


def test_a_wrong_derivative_would_be_caught(kernel, monkeypatch):
    monkeypatch.setitem(instructions.BINARY_GRADIENTS, "mul", ("{g} * {a}", "{g} * {a}"))
    step_kernels.kernels_source.cache_clear()
    try:
        layers = mix([zoo.get("lstm"), zoo.get("gru")])
        expected = values_and_gradients(layers, alone)
        actual = values_and_gradients(layers, together(kernel))
    finally:
        step_kernels.kernels_source.cache_clear()
    assert not all(torch.allclose(a, b) for a, b in zip(expected, actual))


def test_without_gradients_the_outputs_are_the_same():
    layers = mix([zoo.get("mut1"), zoo.get("tanh")])
    with torch.no_grad():
        for (outputs, final), (theirs, their_final) in zip(run_mixed(layers), alone(layers)):
            assert_same([theirs, *their_final], [outputs, *final])


def test_an_lstm_step_is_one_stage_and_a_gru_step_two():
    lstm = plan(zoo.get("lstm"))
    program = compile_program(lstm, 3, tuple(("pre:h", c) for c in range(4)))
    assert len(program.stages) == 1 and len(program.stages[0].matmuls) == 4
    gru = compile_program(plan(zoo.get("gru")), 2,
                          (("pre:h", 0), ("pre:h", 1), ("pre:_15", 0), ("sum:_8", 0)))
    assert [len(stage.matmuls) for stage in gru.stages] == [2, 1]  # W_hh (r * h) waits for r


def test_the_layers_of_a_mix_share_their_window():
    layers = [layer(zoo.get("lstm"), 1, 3, 0, T=4), layer(zoo.get("gru"), 1, 3, 1, T=5)]
    with pytest.raises(ValueError, match="share their window"):
        run_mixed(layers)


def test_the_kernel_is_usable_where_it_agrees_and_says_why_where_not(interpreted, monkeypatch):
    mixed.usable.cache_clear()
    assert mixed.usable("cpu")
    mixed.usable.cache_clear()
    monkeypatch.setitem(instructions.BINARY_GRADIENTS, "mul", ("{g} * {a}", "{g} * {a}"))
    step_kernels.kernels_source.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="disagrees"):
            assert not mixed.usable("cpu")
    finally:
        mixed.usable.cache_clear()
        step_kernels.kernels_source.cache_clear()


def test_an_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="unknown kernel 'cuda'; known: torch, triton, persistent"):
        run_mixed(mix([zoo.get("lstm")]), kernel="cuda")


def test_the_kernels_across_several_tiles_of_a_matmul(kernel):
    # B = 70 rows > 64 and n = 70 columns > 64 (and > 32, the kernel's inner block): two row
    # tiles and two column tiles per member, each reducing over three blocks, some padding
    layers = [layer(zoo.get("lstm"), 1, 70, 0, T=2, B=70), layer(zoo.get("gru"), 1, 20, 1, T=2, B=70)]
    assert_same(values_and_gradients(layers, alone), values_and_gradients(layers, together(kernel)))


def test_the_kernels_where_no_member_multiplies_a_state(kernel):
    # a step without a matmul: a stage of instructions only, alone and mixed with the LSTM
    gated = parse("h' = tanh(W_xh x + b_h) * h")
    for graphs in ([gated], [gated, zoo.get("lstm")]):
        layers = mix(graphs, seed=5)
        assert_same(values_and_gradients(layers, alone),
                    values_and_gradients(layers, together(kernel)))


def test_a_step_launches_its_kernels_only(monkeypatch):
    # Per step and stage one kernel each way; everything else the window runs (its slots in
    # and out, the matrices' gradient) runs once, whatever T.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        kernels = others = 0
        in_kernel = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.others += not self.in_kernel
            return func(*args, **(kwargs or {}))

    count = Count()

    def kernel(real):
        def counted(*args, **kwargs):
            count.kernels += 1
            count.in_kernel = True
            try:
                return real(*args, **kwargs)
            finally:
                count.in_kernel = False
        return staticmethod(counted)

    for name in ("stage", "stage_backward"):
        monkeypatch.setattr(mixed.TorchKernels, name, kernel(getattr(mixed.TorchKernels, name)))

    def launches(T):
        """(kernels, other operations) of a forward, and of a backward, over T steps."""
        layers = [layer(zoo.get("lstm"), 2, 5, 0, T=T), layer(zoo.get("gru"), 1, 3, 1, T=T)]
        results = run_mixed(layers)  # (uncounted: the first run makes the mix's tables)
        loss = sum(outputs.sum() + sum(f.sum() for f in final) for outputs, final in results)
        count.kernels = count.others = 0
        with count:
            loss.backward()
        backward = (count.kernels, count.others)
        count.kernels = count.others = 0
        with count:
            run_mixed(layers)
        return (count.kernels, count.others), backward

    (forward3, backward3), (forward6, backward6) = launches(3), launches(6)
    assert forward3[0] == 3 * 2 and forward6[0] == 6 * 2  # T x two stages (the GRU's)
    assert backward3[0] == 3 * 2 + 1 and backward6[0] == 6 * 2 + 1  # (the first matmuls last)
    assert forward3[1] == forward6[1] and backward3[1] == backward6[1]


@pytest.mark.parametrize("kernel", ["torch", "triton", "persistent"])
def test_carried_states_start_from_zero_where_reset_and_take_the_final_state(kernel, request):
    if kernel != "torch":
        request.getfixturevalue("interpreted")
    layers = mix([zoo.get("lstm"), zoo.get("gru"), zoo.get("mut2")], seed=3)
    reset = torch.tensor([True, False, True][:layers[0].x.shape[2]])

    def carried():  # the first two carried (fresh buffers each time), the third not
        return [Layer(lay.plan, lay.params, lay.x, tuple(s.detach().clone() for s in lay.state),
                      reset) for lay in layers[:2]] + layers[2:]

    def starting(lay):
        return tuple(torch.where(reset.view(1, -1, 1), 0.0, s.detach()) for s in lay.state)

    expected = [run(lay.plan, lay.params, lay.x, starting(lay)) for lay in layers[:2]]
    expected += alone(layers[2:])
    mixed_layers = carried()
    results = run_mixed(mixed_layers, kernel)
    for (outputs, final), (theirs, their_final) in zip(results, expected):
        assert_same([theirs, *their_final], [outputs, *final])
    assert all(final is lay.state for (_, final), lay in zip(results[:2], mixed_layers))
    # the gradients of everything but the carried states: those of each layer alone
    leaves = [t for lay in layers for t in (lay.x, *lay.params.values())]

    def gradients(results):
        loss = sum((outputs * torch.linspace(-1, 1, outputs.shape[-1], dtype=torch.float64)).sum()
                   for outputs, _ in results)
        return list(torch.autograd.grad(loss, leaves, allow_unused=True))

    expected = [run(lay.plan, lay.params, lay.x, starting(lay)) for lay in layers[:2]]
    assert_same(gradients(expected + alone(layers[2:])), gradients(run_mixed(carried(), kernel)))


def test_the_persistent_kernels_launch_once_a_window_each_way(interpreted, monkeypatch):
    launched = []
    real = step_kernels.module

    class Counting:
        def __getattr__(self, name):
            kernel = getattr(real(), name)

            class Launch:
                def __getitem__(self, grid):
                    launched.append(name)
                    return kernel[grid]
            return Launch()

    monkeypatch.setattr(step_kernels, "module", Counting)
    layers = mix([zoo.get("gru"), zoo.get("lstm"), *mutants(2)], seed=4, T=5)
    values_and_gradients(layers, together("persistent"))
    assert launched == ["window_kernel", "window_backward_kernel"]
