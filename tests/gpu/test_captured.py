"""The CUDA-graph engine gives the same losses as eager mode (run on the GPU machine)."""

import functools
import random

import pytest
import torch

from cellsearch.cells import zoo
from cellsearch.cells.equations import parse
from cellsearch.cells.mutate import mutate
from cellsearch.evaluation.settings import Settings
from cellsearch.tasks.arith import Arith
from cellsearch.train.evaluate import evaluate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def graphs():
    yield from ((name, zoo.get(name)) for name in ("lstm", "gru", "mut1", "lstm-b"))
    for seed in range(3):
        yield f"mutated gru {seed}", mutate(zoo.get("gru"), random.Random(seed)).graph


@pytest.mark.parametrize("engine", ["eager", "fused"])
@pytest.mark.parametrize("name, graph", list(graphs()), ids=lambda v: v if isinstance(v, str) else "")
def test_captured_equals_eager(name, graph, engine):
    task = Arith(seed=0, epoch_windows=12, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=s, learning_rate=lr, max_grad_norm=5.0, num_layers=layers,
                         num_parameters=20_000, seed=i)
                for i, (s, lr, layers) in enumerate([(1.0, 0.5, 1), (0.7, 1.0, 1), (1.4, 0.2, 1)])]
    eager = evaluate(graph, task, settings, device="cuda", max_epochs=3, capture=False,
                     engine=engine)
    captured = evaluate(graph, task, settings, device="cuda", max_epochs=3, capture=True,
                        engine=engine)
    for a, b in zip(eager, captured):
        assert a.status == b.status
        assert a.valid["nll"] == pytest.approx(b.valid["nll"], rel=1e-5), name
        assert a.test["accuracy"] == pytest.approx(b.test["accuracy"], abs=1e-6), name


def test_populations_of_different_shapes_train_concurrently_as_they_would_alone():
    task = Arith(seed=0, epoch_windows=10, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=layers,
                         num_parameters=budget, seed=i)
                for i, (layers, budget) in enumerate([(1, 20_000), (2, 20_000), (1, 40_000)])]
    together = evaluate(zoo.get("gru"), task, settings, device="cuda", max_epochs=2)
    for setting, result in zip(settings, together):
        (alone,) = evaluate(zoo.get("gru"), task, [setting], device="cuda", max_epochs=2)
        assert result.status == alone.status == "ok"
        assert result.valid["nll"] == pytest.approx(alone.valid["nll"], rel=1e-5)


def test_captured_equals_eager_with_dropout():
    task = Arith(seed=0, epoch_windows=12, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=2,
                         num_parameters=20_000, dropout=rate, seed=i)
                for i, rate in enumerate((0.1, 0.5))]
    eager = evaluate(zoo.get("lstm"), task, settings, device="cuda", max_epochs=2, capture=False)
    captured = evaluate(zoo.get("lstm"), task, settings, device="cuda", max_epochs=2)
    for a, b in zip(eager, captured):
        assert a.valid["nll"] == pytest.approx(b.valid["nll"], rel=1e-5)


# the paper's minibatch; and, in each mode, padding or more rows than one block holds
@pytest.mark.parametrize("mode, shape", [
    ("persistent", (4, 6, 20, 32)), ("persistent", (3, 5, 40, 45)),
    ("dot", (4, 6, 20, 32)), ("dot", (3, 5, 70, 45)),
    ("cublas", (4, 6, 20, 32)), ("cublas", (3, 5, 70, 45)),
], ids=str)
@pytest.mark.parametrize("name, graph", [
    *graphs(),
    # new states that no elementwise node defines, a matmul of a matmul (see tests/cells/test_fused)
    ("state from a matmul", parse("h' = tanh(W_h h + c + W_x x)\nc' = W_c h")),
    ("matmul of a matmul", parse("h' = tanh(W_2 W_1 h + W_h h + W_x x)")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_fused_kernels_give_the_eager_values_and_gradients(name, graph, mode, shape):
    from cellsearch.engine.kernels.fused import run_fused
    from cellsearch.engine.plan import plan, run

    def outputs_and_gradients(runner):
        generator = torch.Generator(device="cuda").manual_seed(0)
        K, T, B, n = shape

        def leaf(*shape):
            return torch.randn(*shape, generator=generator, device="cuda").requires_grad_()

        # weights ~ 1/sqrt(n), as training initializes them (larger ones make a chaotic map that
        # magnifies any rounding, a matmul of a matmul most)
        params = {node.param: leaf(K, n, n) * n ** -0.5 if node.op == "matmul" else leaf(K, n)
                  for node in graph.parameters}
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        x, state = leaf(K, T, B, n), tuple(leaf(K, B, n) for _ in graph.states)
        out, final = runner(plan(graph), params, x, state)
        loss = out.square().sum() + sum(f.sum() for f in final)
        grads = torch.autograd.grad(loss, [x, *state, *params.values()], allow_unused=True)
        return [out, *final, *(g for g in grads if g is not None)]

    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for a, b in zip(outputs_and_gradients(run),
                        outputs_and_gradients(functools.partial(run_fused, mode=mode))):
            # float32 rounding relative to the tensor's scale (mutants can reach 1e4)
            assert (a - b).abs().max() <= 1e-5 * a.abs().max() + 1e-6, name
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


@pytest.mark.parametrize("name, graph", list(graphs()), ids=lambda v: v if isinstance(v, str) else "")
def test_captured_fused_training_follows_eager_training(name, graph):
    task = Arith(seed=0, epoch_windows=12, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=s, learning_rate=lr, max_grad_norm=5.0, num_layers=layers,
                         num_parameters=20_000, seed=i)
                for i, (s, lr, layers) in enumerate([(1.0, 0.2, 1), (0.5, 0.1, 2)])]
    eager = evaluate(graph, task, settings, device="cuda", max_epochs=3, capture=False,
                     engine="eager")
    fused = evaluate(graph, task, settings, device="cuda", max_epochs=3, engine="fused")
    for a, b in zip(eager, fused):
        assert a.status == b.status
        # float rounding differs (fused arithmetic), and TF32 matmuls magnify it: moderate
        # learning rates keep the two trajectories close
        assert a.valid["nll"] == pytest.approx(b.valid["nll"], rel=5e-3), name


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("V", [40, 10_000])  # arith's and PTB's vocabularies
def test_the_cross_entropy_kernels_match_torch(V, with_bias):
    from tests.tasks.cross_entropy_checks import (
        check_against_torch_in_the_models_layout,
    )

    check_against_torch_in_the_models_layout(V, device="cuda", with_bias=with_bias)


def test_the_sgd_kernels_match_torch():
    from tests.train.sgd_checks import check_update

    check_update(device="cuda")


def test_the_grouped_sgd_kernels_match_torch():
    from cellsearch.engine.kernels.sgd import grouped_usable
    from tests.train.sgd_checks import (
        check_grouped_equals_the_single_kernels,
        check_grouped_update,
    )

    check_grouped_update(device="cuda")
    check_grouped_equals_the_single_kernels(device="cuda")
    assert grouped_usable("cuda")  # (else mixed steps update each population alone)


@pytest.mark.parametrize("capture", [False, True])
def test_mixed_steps_train_alike_with_the_grouped_sgd(capture):
    """Captured, the grouped update replays its table of gradient addresses from the capture."""
    from tests.train.sgd_checks import check_mixed_steps_train_alike_with_grouped_sgd

    check_mixed_steps_train_alike_with_grouped_sgd(device="cuda", capture=capture)


def test_the_grouped_products_kernel_matches_torch():
    from cellsearch.engine.kernels.products import usable
    from tests.cells.products_checks import (
        check_kept_tables_are_rewritten_each_call,
        check_products_match_torch,
    )

    check_products_match_torch(device="cuda")
    check_kept_tables_are_rewritten_each_call(device="cuda")
    assert usable("cuda")  # (else mixed steps form each population's products alone)


@pytest.mark.parametrize("capture", [False, True])
def test_mixed_steps_train_alike_with_the_grouped_products(capture):
    """Captured, the training and the evaluation step each replay their own tables."""
    from tests.cells.products_checks import (
        check_mixed_steps_train_alike_with_grouped_products,
    )

    check_mixed_steps_train_alike_with_grouped_products(device="cuda", capture=capture)


def test_the_copies_kernel_copies_every_kind_as_torch_does():
    from cellsearch.engine.kernels.copies import usable

    assert usable("cuda")  # (else a mixer loads each population's window on its own)


def test_the_grouped_loss_matches_each_populations():
    from cellsearch.engine.kernels.cross_entropy import grouped_usable
    from tests.tasks.cross_entropy_checks import (
        check_grouped_loss_sums_are_each_populations,
    )

    for V in (7, 2100):
        check_grouped_loss_sums_are_each_populations(V, device="cuda")
    assert grouped_usable("cuda")  # (else mixed steps take each population's loss alone)


@pytest.mark.parametrize("capture", [False, True])
def test_mixed_steps_train_alike_with_the_grouped_loss(capture):
    """Captured, the training step replays the loss's tables."""
    from tests.tasks.cross_entropy_checks import (
        check_mixed_steps_train_alike_with_the_grouped_loss,
    )

    check_mixed_steps_train_alike_with_the_grouped_loss(device="cuda", capture=capture)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_training_with_the_sgd_kernels_follows_torchs_update(name, monkeypatch):
    from cellsearch.train import steps

    task = Arith(seed=0, epoch_windows=12, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=1.0, learning_rate=lr, max_grad_norm=norm, num_layers=1,
                         num_parameters=20_000, seed=i)
                for i, (lr, norm) in enumerate([(0.5, 5.0), (1.0, 0.5)])]  # the second clips
    torchs = evaluate(zoo.get(name), task, settings, device="cuda", max_epochs=3, engine="fused")
    monkeypatch.setattr(steps, "SGD_KERNEL_PARAMETERS", 0)  # the kernels for any size
    kernels = evaluate(zoo.get(name), task, settings, device="cuda", max_epochs=3, engine="fused")
    for a, b in zip(torchs, kernels):
        assert a.status == b.status
        assert a.valid["nll"] == pytest.approx(b.valid["nll"], rel=1e-3), name


def test_capturing_a_population_keeps_the_memory_others_have_cached():
    """`torch.cuda.graph` empties the caching allocator (and synchronizes the device) before it
    captures; with many populations on one GPU every new one would make the rest allocate afresh.
    The engine's capture does neither (steps.Captured._captured)."""
    from cellsearch.train import steps as steps_module
    from cellsearch.train.model import PopulationModel
    from cellsearch.train.steps import WARMUP_CALLS, PopulationSteps

    task = Arith(seed=0, epoch_windows=4, valid_samples=50, test_samples=50)
    model = PopulationModel(zoo.get("gru"), 2, task.input_size, task.output_size, 32, 1,
                            "embedding", engine="fused")
    model.reset_parameters([1.0, 1.0], [0, 1])
    model.to("cuda")
    steps = PopulationSteps(model, task, 20, 35, torch.tensor([5.0, 5.0], device="cuda"), None,
                            capture=True)
    steps.learning_rates.fill_(0.5)
    batches = iter(task.batches("train", 20, 35))
    for _ in range(WARMUP_CALLS):
        steps.load(next(batches))
        steps.train_step()
    cached = torch.empty(64 * 2**20, device="cuda")  # 256 MB, then free but kept in the cache
    del cached
    reserved = torch.cuda.memory_reserved()
    steps.load(next(batches))
    steps.train_step()  # captures
    assert steps.train_step.graph is not None and steps_module._LIGHT_CAPTURE
    assert torch.cuda.memory_reserved() >= reserved


@pytest.mark.parametrize("kernel", ["triton", "persistent"])
def test_the_mixed_engines_kernel_and_captured_step_on_the_gpu(kernel, monkeypatch):
    """The mixed engine's kernels compiled for the GPU, a stage at a time or the whole window,
    give the eager engine's values and gradients (float32, TF32 matmuls: loose tolerances), and
    a mixed step captured into a CUDA graph trains as the same step run eagerly."""
    from cellsearch.engine import mixed
    from cellsearch.engine.mixed import Layer, run_mixed

    monkeypatch.setattr(mixed, "CUDA_KERNEL", kernel)
    from cellsearch.engine.plan import plan, run
    from cellsearch.tasks.memorize import Memorize
    from cellsearch.train.model import PopulationModel
    from cellsearch.train.steps import MixedSteps, PopulationSteps

    generator = torch.Generator().manual_seed(0)
    layers = []
    for name, K, n in (("lstm", 2, 40), ("gru", 3, 70), ("mut2", 1, 130)):
        graph = zoo.get(name)
        params = {node.param: (torch.randn(K, *((n, n) if node.op == "matmul" else (n,)),
                                           generator=generator) / n ** 0.5).cuda().requires_grad_()
                  for node in graph.parameters}
        x = torch.randn(K, 5, 20, n, generator=generator).cuda().requires_grad_()
        state = tuple(torch.zeros(K, 20, n, device="cuda") for _ in graph.states)
        layers.append(Layer(plan(graph), params, x, state))
    leaves = [t for layer in layers for t in (layer.x, *layer.params.values())]
    ours = run_mixed(layers, kernel=kernel)
    theirs = [run(layer.plan, layer.params, layer.x, layer.state) for layer in layers]
    for (a, _), (b, _) in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    grads = [torch.autograd.grad(sum(o.square().sum() for o, _ in results), leaves)
             for results in (ours, theirs)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)

    task = Memorize(seed=0, epoch_windows=8, valid_samples=30, test_samples=30)

    def populations():
        made = []
        for i, (name, n) in enumerate((("lstm", 30), ("gru", 45))):
            model = PopulationModel(zoo.get(name), 2, task.input_size, task.output_size, n, 2,
                                    "embedding", "fused")
            model.reset_parameters([1.0, 0.5], [i, i + 10])
            model.cuda()
            made.append(PopulationSteps(model, task, 20, 35, torch.full((2,), 5.0).cuda(), None,
                                        capture=False))
            made[-1].learning_rates.fill_(0.5)
        return made

    trained = []
    for capture in (False, True):
        pops = populations()
        together = MixedSteps(pops, capture=capture)
        for batch in task.batches("train", 20, 35, epoch=0):
            for steps in pops:
                steps.load(batch)
            together.train_step()
        torch.cuda.synchronize()
        trained.append([steps.flat_parameters.clone() for steps in pops])
    for eager, captured in zip(*trained):
        torch.testing.assert_close(captured, eager, rtol=1e-3, atol=1e-4)
