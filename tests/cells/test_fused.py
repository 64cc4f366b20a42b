"""Generated kernels (`cellsearch.fused`) against the eager step, run through Triton's CPU
interpreter: values and gradients of whole sequences, for the zoo and for mutated graphs."""

import random

import pytest
import torch
from hypothesis import given, settings

from cellsearch import zoo
from cellsearch.compile import MatmulGroup, plan, step_eagerly
from cellsearch.equations import format_graph, parse
from cellsearch.fused import Segment, fused_loop, kernel_source, product_name, step_fused
from cellsearch.mutate import mutate

from .random_graphs import graphs as random_graphs
from .sequences import assert_same, stepped, values_and_gradients

pytest.importorskip("triton")
# saturating tanh and sigmoid overflow exp on purpose (exp -> inf gives exactly ±1, 0 or 1)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when a kernel module is loaded


def graphs():
    yield from ((name, zoo.get(name)) for name in zoo.names())
    for seed in range(12):
        yield f"mutated gru {seed}", mutate(zoo.get("gru"), random.Random(seed)).graph
    for seed in range(6):
        yield f"mutated mut3 {seed}", mutate(zoo.get("mut3"), random.Random(seed)).graph


@pytest.mark.parametrize("name, graph", list(graphs()), ids=lambda v: v if isinstance(v, str) else "")
def test_fused_step_matches_eager_values_and_gradients(name, graph):
    eager = values_and_gradients(graph, stepped(step_eagerly))
    assert_same(eager, values_and_gradients(graph, stepped(step_fused)), name)


@settings(max_examples=25, deadline=None)
@given(graph=random_graphs)
def test_fused_step_matches_eager_on_random_graphs(graph):
    eager = values_and_gradients(graph, stepped(step_eagerly))
    assert_same(eager, values_and_gradients(graph, stepped(step_fused)))


def test_a_wrong_derivative_would_be_caught(monkeypatch):
    from cellsearch import fused

    wrong = dict(fused._ACTIVATION_GRADIENT, sigmoid="{g} * {y}")
    monkeypatch.setattr(fused, "_ACTIVATION_GRADIENT", wrong)
    monkeypatch.setattr(fused, "_source", fused.kernel_source)  # no cached sources
    eager = values_and_gradients(zoo.get("gru"), stepped(step_eagerly))
    fused_values = values_and_gradients(zoo.get("gru"), stepped(step_fused))
    assert not all(torch.allclose(a, b) for a, b in zip(eager, fused_values))


def test_lstm_is_one_matmul_and_one_kernel_per_step():
    group, segment = fused_loop(plan(zoo.get("lstm")))
    assert isinstance(group, MatmulGroup) and isinstance(segment, Segment)
    # reads the four chunks of the product in one argument, and c; writes only c' and h'
    assert segment.arguments == (product_name("h"), "c")
    assert segment.chunks == (4, 1)
    assert sorted(segment.outputs) == ["c'", "h'"]


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
    from cellsearch import fused

    fused.usable.cache_clear()
    assert fused.usable("cpu")  # the interpreter runs them on the CPU
    fused.usable.cache_clear()

    def broken(segment):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fused, "kernels", broken)
    with pytest.warns(RuntimeWarning, match="not usable on cpu.*no compiler.*eager step"):
        assert not fused.usable("cpu")
    fused.usable.cache_clear()


def test_sizes_beyond_32_bit_indexing_are_refused_not_wrapped():
    from cellsearch.fused import _check_32bit_offsets

    _check_32bit_offsets([torch.zeros(2, 3, 4)], [1], 2, 3, 4)
    # one step of a (K=512, T=4096, B=32, n=64) sequence: offsets reach K * T * B * n = 2^32
    # (a meta tensor: shape and strides without memory)
    step = torch.empty_strided((2**9, 2**5, 2**6), (2**23, 2**6, 1), device="meta")
    with pytest.raises(ValueError, match="32-bit indexing"):
        _check_32bit_offsets([step], [1], 2**9, 2**5, 2**6)
    # the offset of the last element sums over dimensions, none of which alone overflows
    spread = torch.empty_strided((2, 2, 2), (2**30, 2**30, 1), device="meta")
    with pytest.raises(ValueError, match="32-bit indexing"):
        _check_32bit_offsets([spread], [1], 2, 2, 2)
