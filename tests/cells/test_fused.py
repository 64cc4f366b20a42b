"""Generated kernels (`engine.kernels.fused`) against the eager step, run through Triton's CPU
interpreter: values and gradients of whole sequences, for the zoo and for mutated graphs."""

import functools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph, parse
from cellsearch.cells.mutate import mutate
from cellsearch.engine.kernels.fused import (
    MODES,
    Segment,
    fused_loop,
    kernel_source,
    mode_for,
    operand_gradients,
    product_name,
    run_fused,
)
from cellsearch.engine.plan import MatmulGroup, plan, step_eagerly

from .random_graphs import direct_output_graphs
from .random_graphs import graphs as random_graphs
from .sequences import assert_same, planned, stepped, values_and_gradients

pytest.importorskip("triton")
# saturating tanh and sigmoid overflow exp on purpose (exp -> inf gives exactly ±1, 0 or 1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
    # random graphs multiply products of products: inf and nan, as in the eager step they match
    pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when a kernel module is loaded


def graphs():
    yield from ((name, zoo.get(name)) for name in zoo.names())
    for seed in range(12):
        yield f"mutated gru {seed}", mutate(zoo.get("gru"), random.Random(seed)).graph
    for seed in range(6):
        yield f"mutated mut3 {seed}", mutate(zoo.get("mut3"), random.Random(seed)).graph


def fused_in(mode):
    return planned(functools.partial(run_fused, mode=mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, graph", list(graphs()), ids=lambda v: v if isinstance(v, str) else "")
def test_fused_matches_eager_values_and_gradients(name, graph, mode):
    eager = values_and_gradients(graph, stepped(step_eagerly))
    assert_same(eager, values_and_gradients(graph, fused_in(mode)), name)


@pytest.mark.parametrize("mode, B, n", [("persistent", 40, 45), ("dot", 70, 45), ("cublas", 70, 45)])
@pytest.mark.parametrize("name", ["lstm", "gru", "mut2"])
def test_fused_matches_eager_across_padding_and_several_blocks(name, mode, B, n):
    # persistent: one 64 x 64 block with padding; per step: two row blocks of 64, two unit
    # blocks and two reduction steps of 32
    eager = values_and_gradients(zoo.get(name), stepped(step_eagerly), K=2, T=3, B=B, n=n)
    fused = values_and_gradients(zoo.get(name), fused_in(mode), K=2, T=3, B=B, n=n)
    assert_same(eager, fused, name)


# Shapes the zoo lacks but mutation makes: a new state that is a matmul's product or a static
# value (no elementwise node defines it), and a matmul of a matmul's product.
SHAPED = {
    "state from a matmul": "h' = tanh(W_h h + c + W_x x)\nc' = W_c h",
    "state from x alone": "h' = tanh(W_h h + c)\nc' = tanh(W_x x)",
    "matmul of a matmul": "h' = tanh(W_2 W_1 h + W_x x)",
    "chain beside its group": "h' = tanh(W_2 W_1 h + W_h h + W_x x)",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text", SHAPED.values(), ids=SHAPED.keys())
def test_fused_matches_eager_on_graphs_without_elementwise_outputs_or_with_chained_matmuls(
        text, mode):
    # n = 40: several unit blocks, so one program's stores are not another's loads
    eager = values_and_gradients(parse(text), stepped(step_eagerly), n=40, B=4)
    assert_same(eager, values_and_gradients(parse(text), fused_in(mode), n=40, B=4), text)


def test_a_matmul_of_a_product_formed_in_the_same_step_gets_a_kernel_of_its_own():
    loop = fused_loop(plan(parse(SHAPED["matmul of a matmul"])))
    kinds = [type(item).__name__ for item in loop]
    assert kinds == ["MatmulGroup", "Segment", "MatmulGroup", "Segment"]
    assert not loop[1].items and loop[1].computes[0][1] is loop[0]  # only forms W_1 h


def test_the_mode_follows_the_sizes():
    lstm = torch.empty(1, 1, 4, device="meta")
    assert mode_for(20, 52, [lstm]) == "persistent"  # memorization's 25K parameters
    assert mode_for(20, 171, [torch.empty(32, 171, 684, device="meta")]) == "dot"
    assert mode_for(20, 171, [torch.empty(512, 171, 684, device="meta")]) == "cublas"
    # one LSTM: 6 programs, each reducing over 4 chunks of 6 blocks; a GRU's widest chain is 14
    assert mode_for(20, 171, [torch.empty(1, 171, 684, device="meta")]) == "cublas"
    gru = [torch.empty(1, 215, 430, device="meta"), torch.empty(1, 215, 215, device="meta")]
    assert mode_for(20, 215, gru) == "dot"
    assert mode_for(100, 52, [lstm]) == "dot"  # more rows than a program holds


@settings(max_examples=25, deadline=None)
@given(graph=st.one_of(random_graphs, direct_output_graphs), mode=st.sampled_from(MODES))
def test_fused_matches_eager_on_random_graphs(graph, mode):
    eager = values_and_gradients(graph, stepped(step_eagerly))
    assert_same(eager, values_and_gradients(graph, fused_in(mode)))


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_derivative_would_be_caught(monkeypatch, mode):
    from cellsearch.engine.kernels import codegen, fused, persistent

    wrong = dict(codegen.ACTIVATION_GRADIENT, sigmoid="{g} * {y}")
    monkeypatch.setattr(codegen, "ACTIVATION_GRADIENT", wrong)
    # no cached sources
    monkeypatch.setattr(fused, "_source", fused.kernel_source)
    monkeypatch.setattr(persistent, "_source", persistent.kernel_source)
    eager = values_and_gradients(zoo.get("gru"), stepped(step_eagerly))
    fused_values = values_and_gradients(zoo.get("gru"), fused_in(mode))
    assert not all(torch.allclose(a, b) for a, b in zip(eager, fused_values))


def test_lstm_is_one_matmul_and_one_kernel_per_step():
    group, segment = fused_loop(plan(zoo.get("lstm")))
    assert isinstance(group, MatmulGroup) and isinstance(segment, Segment)
    # reads the four chunks of the product in one argument, and c; writes only c' and h'
    assert segment.arguments == (product_name("h"), "c")
    assert segment.chunks == (4, 1)
    assert sorted(segment.outputs) == ["c'", "h'"]


def test_the_kernels_defining_narrow_operands_add_their_gradients():
    gru = plan(zoo.get("gru"))
    loop, added = fused_loop(gru), operand_gradients(gru)
    # the second segment defines h' (read by the next step's 2-chunk group on h); the first
    # defines r * h (read by this step's group): each adds its operand's share, no baddbmm_
    assert {position: [(loop[position].outputs[g.output], g.operand, g.next_step) for g in found]
            for position, found in added.items()} == {
        3: [("h'", "h", True)], 1: [(loop[2].operand, loop[2].operand, False)]}
    assert operand_gradients(plan(zoo.get("lstm"))) == {}  # its 4-chunk group: cuBLAS's


def test_gru_segments_pass_on_what_later_steps_read():
    loop = fused_loop(plan(zoo.get("gru")))
    kinds = [type(item).__name__ for item in loop]
    assert kinds == ["MatmulGroup", "Segment", "MatmulGroup", "Segment"]
    first, second = loop[1], loop[3]
    # r * h feeds the second matmul; z is read again after it
    assert set(first.outputs) == {loop[2].operand, "z"}
    assert "h'" in second.outputs


def test_kernel_source_depends_only_on_the_graph():
    def sources(graph):
        return [kernel_source(s) for s in fused_loop(plan(graph)) if isinstance(s, Segment)]

    # the same cell built again from its text: a different graph and plan object, the same code
    rebuilt = parse(format_graph(zoo.get("mut2")))
    assert rebuilt is not zoo.get("mut2")
    assert sources(rebuilt) == sources(zoo.get("mut2"))
    assert sources(zoo.get("lstm")) != sources(zoo.get("lstm-f"))


def test_lstm_input_side_is_one_baddbmm_in_the_recurrent_layout():
    lstm = zoo.get("lstm")
    (group, _) = fused_loop(plan(lstm))
    part = group.static_part
    assert part.operand == "x"
    # chunk i adds W_x<gate> x + b_<gate>, in the order of the recurrent matrices W_h<gate>
    assert [p.replace("W_x", "") for p in part.matrices] == [
        p.replace("W_h", "") for p in group.params]
    assert [[lstm.node(t).param for _, t in terms] for terms in part.constants] == [
        [f"b_{p[-1]}"] for p in group.params]
    # so no x-side matmul is left to run on its own
    assert not [node for node in plan(lstm).static if node.op == "matmul"]


def test_kernels_that_work_are_used_and_broken_ones_fall_back_with_a_warning(monkeypatch):
    from cellsearch.engine.kernels import codegen, fused

    fused._usable.cache_clear()
    assert fused.usable("cpu")  # the interpreter runs them on the CPU
    fused._usable.cache_clear()

    def broken(source, kind):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(codegen, "load_module", broken)
    with pytest.warns(RuntimeWarning, match="not usable on cpu.*no compiler.*eager step"):
        assert not fused.usable("cpu")
    fused._usable.cache_clear()


def test_member_offsets_are_64_bit():
    # A population's buffers pass 2^31 elements at K=512 and a few hundred units (a window's
    # products are K x T x B x 4n): the member index, which scales the largest stride, is int64,
    # so every offset built on it is too. (Within a member, offsets stay far below 2^31.)
    for segment in fused_loop(plan(zoo.get("gru"))):
        if isinstance(segment, Segment):
            source = kernel_source(segment)
            assert source.count("k = tl.program_id(0).to(tl.int64)") == 2
            assert all("+ k *" in line for line in source.splitlines() if "tl.load(" in line)


def test_the_persistent_backward_loads_the_forward_values_it_needs_rather_than_recomputing():
    from cellsearch.engine.kernels import persistent
    from cellsearch.engine.plan import window_inputs

    lstm = zoo.get("lstm")
    plan_ = plan(lstm)
    params = {node.param: torch.zeros(1, 8, 8) if node.op == "matmul" else torch.zeros(1, 8)
              for node in lstm.parameters}
    names = tuple(window_inputs(plan_, params, torch.zeros(1, 3, 2, 8))[0])
    source = persistent.kernel_source(plan_, names)
    forward, backward = source.split("def backward_kernel")
    # the forward stores the four gates and tanh(c) a step; the backward's only matmuls are the
    # four of the state's gradient with the transposed matrices
    assert persistent.saved_count(plan_, names) == 5
    assert forward.count("tl.store(v") == 5 and backward.count("= tl.load(v") == 2 * 5
    assert backward.count("tl.dot(") == 4 and backward.count("tl.dot(") == backward.count(", wt0_")


@pytest.mark.parametrize("name", ["lstm", "gru", "mut3"])
def test_the_persistent_kernels_write_every_element_of_the_buffers_they_do_not_zero(
        monkeypatch, name):
    # fresh allocations are often zeros already: poison them, so an element a kernel leaves
    # unwritten shows
    empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, *a, **k: empty(self, *a, **k).fill_(float("nan")))
    eager = values_and_gradients(zoo.get(name), stepped(step_eagerly))
    assert_same(eager, values_and_gradients(zoo.get(name), fused_in("persistent")))


def test_persistent_kernels_too_large_to_hoist_load_their_matrices_each_step(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from cellsearch.engine.kernels import codegen, persistent

    real_load = codegen.load_module

    def load(source, kind):
        if source.startswith("#hoisted"):
            return FailingModule()
        return real_load(source, kind)

    class FailingModule:  # module.kernel[grid](...) fails as Triton's launch would
        def __getattr__(self, kernel):
            return self

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(300_000, 232_448, "shared memory")
            return launch

    monkeypatch.setattr(codegen, "load_module", load)
    monkeypatch.setattr(persistent, "_source", lambda plan_, names, hoist: (
        "#hoisted\n" * hoist + persistent.kernel_source(plan_, names, hoist)))
    monkeypatch.setattr(persistent, "_UNHOISTED", set())
    eager = values_and_gradients(zoo.get("gru"), stepped(step_eagerly))
    assert_same(eager, values_and_gradients(zoo.get("gru"), fused_in("persistent")))
    assert len(persistent._UNHOISTED) == 1  # and later launches go straight to the fallback


def test_the_check_runs_once_when_populations_ask_at_once(monkeypatch):
    import threading

    from cellsearch.engine.kernels import fused

    fused._usable.cache_clear()
    checks = []
    real = fused.run_fused
    monkeypatch.setattr(fused, "run_fused", lambda *a, **k: checks.append(1) or real(*a, **k))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(fused.usable("cpu")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 4 and len(checks) == 1
    fused._usable.cache_clear()


@pytest.mark.parametrize("mode", MODES)
def test_a_second_backward_is_refused_clearly(mode):
    graph = zoo.get("gru")
    params = {node.param: torch.randn(1, 4, 4) if node.op == "matmul" else torch.randn(1, 4)
              for node in graph.parameters}
    params = {name: value.requires_grad_() for name, value in params.items()}
    outputs, _ = run_fused(plan(graph), params, torch.randn(1, 3, 2, 4),
                           (torch.zeros(1, 2, 4),), mode=mode)
    outputs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once per forward"):
        outputs.sum().backward()


@settings(max_examples=200, deadline=None)
@given(graph=st.one_of(random_graphs, direct_output_graphs))
def test_the_persistent_forward_saves_exactly_the_values_its_backward_reads(graph):
    # The statements say what they read; checked against a reading of the generated text.
    import re

    from cellsearch.engine.kernels import persistent
    from cellsearch.engine.nn import parameter_shape
    from cellsearch.engine.plan import window_inputs

    plan_ = plan(graph)
    params = {node.param: torch.zeros(1, *parameter_shape(node, 1)) for node in graph.parameters}
    names = tuple(window_inputs(plan_, params, torch.zeros(1, 1, 1, 1))[0])
    code = persistent._Code(plan_, names)
    backward = "\n".join(code.reverse)
    computed = [code.var[m] for g in code.groups for m in g.members]
    computed += [code.var[item.name] for item in plan_.loop if not isinstance(item, MatmulGroup)]
    read = [v for v in computed if re.search(rf"(?<![\w.]){v}(?!\w)", backward)]
    assert code.saved == read
