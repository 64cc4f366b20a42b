"""The training step's clipped SGD update against the formula of §3.7, computed independently."""

import pytest
import torch

from cellsearch.cells import zoo
from cellsearch.engine import mixed as engine_mixed
from cellsearch.tasks.memorize import Memorize
from cellsearch.train.model import PopulationModel
from cellsearch.train.steps import PopulationSteps


@pytest.mark.parametrize("normalization", ["minibatch", "targets"])
def test_each_member_takes_its_own_clipped_sgd_step(normalization):
    torch.manual_seed(0)
    task = Memorize(seed=0, epoch_windows=2, valid_samples=30, test_samples=30)
    model = PopulationModel(zoo.get("gru"), 3, task.input_size, task.output_size, 8, 2,
                            "embedding")
    model.reset_parameters([1.0, 2.0, 0.5], [1, 2, 3])
    max_norms = torch.tensor([1e-3, 1e6, 1.0])  # member 1 is never clipped
    steps = PopulationSteps(model, task, 4, 20, max_norms, None, capture=False,
                            loss_normalization=normalization)
    steps.learning_rates.copy_(torch.tensor([0.5, 0.2, 1.0]))
    steps.load(next(iter(task.batches("train", 4, 20, epoch=1))))
    assert steps.mask.sum() > 0

    # The reference: autograd on a copy of the model, then p - lr * min(1, c / |g|) * g with
    # |g| over all of a member's parameters.
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    names = list(before)
    logits, _ = model(steps.inputs, model.initial_state(4))
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 2), steps.targets.unsqueeze(1).expand(-1, 3, -1).flatten(),
        reduction="none").view(logits.shape[:3]) * steps.mask.unsqueeze(1)
    divisor = 4 if normalization == "minibatch" else steps.mask.sum()  # minibatch of 4 rows
    grads = torch.autograd.grad(nll.sum() / divisor,
                                [dict(model.named_parameters())[n] for n in names])
    norms = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0).sqrt()
    scale = steps.learning_rates * torch.clamp(max_norms / (norms + 1e-6), max=1.0)
    assert scale[0] < 0.5 and scale[1] == 0.2  # member 0 is clipped, member 1 is not
    assert steps.mask.sum() != 4  # the two normalizations differ on this window

    steps.train_step()
    for name, g in zip(names, grads):
        expected = before[name] - scale.view(-1, *[1] * (g.dim() - 1)) * g
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), expected,
                                   rtol=1e-5, atol=1e-6, msg=name)


def test_evaluation_windows_yield_a_window_at_a_time_and_give_what_evaluate_gives():
    from cellsearch.train.steps import drive

    task = Memorize(seed=0, epoch_windows=2, valid_samples=30, test_samples=30)
    model = PopulationModel(zoo.get("gru"), 2, task.input_size, task.output_size, 8, 1,
                            "embedding")
    model.reset_parameters([1.0, 2.0], [1, 2])
    steps = PopulationSteps(model, task, 4, 20, torch.tensor([1.0, 1.0]), None, capture=False)
    windows = steps.evaluation_windows("valid")
    yields = 0
    while True:
        try:
            next(windows)
            yields += 1
        except StopIteration as stop:
            metrics = stop.value
            break
    batches = list(steps.task.batches("valid", steps.mask.shape[1], steps.mask.shape[0]))
    assert yields == len(batches) > 1  # (on a CPU, `settled` adds no yield)
    assert metrics == steps.evaluate("valid") == drive(steps.evaluation_windows("valid"))


def _population(task, graph, K, hidden, layers, seed, dropout=None, **options):
    from cellsearch.train.model import Dropout

    model = PopulationModel(graph, K, task.input_size, task.output_size, hidden, layers,
                            "embedding")
    model.reset_parameters([1.0 + 0.5 * k for k in range(K)], [seed + k for k in range(K)])
    drop = (Dropout(torch.full((K,), dropout), torch.arange(K) + seed)
            if dropout is not None else None)
    steps = PopulationSteps(model, task, 4, 10, torch.linspace(0.5, 5.0, K), drop,
                            capture=False, **options)
    steps.learning_rates.copy_(torch.linspace(0.1, 1.0, K))
    return steps


@pytest.mark.parametrize("normalization", ["minibatch", "targets"])
def test_populations_of_different_cells_trained_together_take_their_own_steps(normalization):
    from cellsearch.train.steps import MixedSteps

    task = Memorize(seed=0, epoch_windows=3, valid_samples=30, test_samples=30)
    shapes = [(zoo.get("lstm"), 2, 6, 2, None), (zoo.get("gru"), 1, 9, 1, 0.3),
              (zoo.get("mut1"), 3, 5, 2, None)]

    def populations():
        return [_population(task, graph, K, n, layers, 10 * i, dropout,
                            loss_normalization=normalization)
                for i, (graph, K, n, layers, dropout) in enumerate(shapes)]

    alone, together = populations(), populations()
    mixed = MixedSteps(together, capture=False)
    engine_mixed._cached_layout.cache_clear()
    for batch in list(task.batches("train", 4, 10, epoch=0)):
        for steps in alone:
            steps.load(batch)
            steps.train_step()
        for steps in together:
            steps.load(batch)
        mixed.train_step()
    for mine, theirs, untrained in zip(together, alone, populations()):
        for (name, p), q in zip(mine.model.named_parameters(), theirs.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
        assert not torch.allclose(theirs.flat_parameters, untrained.flat_parameters)
        for layer, their_layer in zip(mine.state, theirs.state):  # the carried state too
            for s, t in zip(layer, their_layer):
                torch.testing.assert_close(s, t, rtol=1e-4, atol=1e-5)
        assert torch.equal(mine.finite, theirs.finite)
    # A captured step's tables stay with it, not in a cache that may drop them: one mix a depth.
    assert len(mixed.layouts) == 2 and engine_mixed._cached_layout.cache_info().currsize == 0


def test_a_mixed_steps_objective_is_the_sum_of_each_populations():
    from cellsearch.train.steps import MixedSteps

    task = Memorize(seed=0, epoch_windows=3, valid_samples=30, test_samples=30)
    shapes = [(zoo.get("lstm"), 2, 0.3, "targets"), (zoo.get("gru"), 3, None, "minibatch"),
              (zoo.get("mut1"), 1, None, "targets")]

    def populations():
        return [_population(task, graph, K, 5, 1, 10 * i, dropout, loss_normalization=how)
                for i, (graph, K, dropout, how) in enumerate(shapes)]

    alone, together = populations(), populations()
    batch = next(iter(task.batches("train", 4, 10, epoch=0)))
    for steps in alone + together:
        steps.load(batch)
    losses = [torch.tensor([2.0, float("inf")]), torch.tensor([1.0, 3.0, float("nan")]),
              torch.tensor([0.5])]
    expected = sum(steps._objective(loss) for steps, loss in zip(alone, losses))
    mixed = MixedSteps(together, capture=False)
    assert torch.isnan(mixed._objective(torch.cat(losses))) and torch.isnan(expected)
    finite = [loss.isfinite() for loss in losses]
    finite_losses = [torch.where(f, loss, 0.0) for loss, f in zip(losses, finite)]
    expected = sum(steps._objective(loss) for steps, loss in zip(alone, finite_losses))
    torch.testing.assert_close(mixed._objective(torch.cat(finite_losses)), expected)  # (kept)
    for mine, theirs, flags in zip(together, alone, finite):
        assert torch.equal(mine.finite, flags) and torch.equal(theirs.finite, flags)
        if mine.dropout is not None:  # each call advances the masks, as each population's does
            assert mine.dropout.window.item() == theirs.dropout.window.item() == 2


def test_populations_trained_together_share_their_window_shape():
    from cellsearch.train.steps import MixedSteps

    task = Memorize(seed=0, epoch_windows=2, valid_samples=30, test_samples=30)
    first = _population(task, zoo.get("lstm"), 1, 4, 1, 0)
    model = PopulationModel(zoo.get("gru"), 1, task.input_size, task.output_size, 4, 1,
                            "embedding")
    other = PopulationSteps(model, task, 5, 10, torch.ones(1), None, capture=False)
    with pytest.raises(ValueError, match="share their window shape"):
        MixedSteps([first, other], capture=False)


def test_a_mixed_step_runs_eagerly_before_it_is_captured():
    """(Its first training step builds the grouped SGD's tables, which a capture cannot.)"""
    from cellsearch.train.steps import MixedSteps

    task = Memorize(seed=0, epoch_windows=2, valid_samples=30, test_samples=30)
    population = _population(task, zoo.get("lstm"), 1, 4, 1, 0)
    with pytest.raises(ValueError, match="eagerly at least once"):
        MixedSteps([population], capture=True, warmup=0)
    assert MixedSteps([population], capture=False, warmup=0).use_grouped_sgd is False  # (a CPU)


class _Graph:
    def __init__(self, body):
        self.body = body

    def replay(self):
        self.body()


def test_a_capture_out_of_gpu_memory_runs_eagerly_and_is_tried_again_later(monkeypatch):
    from cellsearch.train import steps

    ran, attempts = [], []

    def captured(self):
        attempts.append(self.calls)
        if len(attempts) == 1:  # as ending a capture that the allocation broke raises again
            try:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            except torch.cuda.OutOfMemoryError:
                raise RuntimeError("operation failed due to a previous error during capture")
        return _Graph(lambda: ran.append("replayed"))

    monkeypatch.setattr(steps.Captured, "_captured", captured)
    monkeypatch.setattr(steps.Captured, "_eagerly", lambda self: ran.append("eager"))
    monkeypatch.setattr(steps, "CAPTURE_RETRY_CALLS", 3)
    step = steps.Captured(lambda: None, capture=True, warmup=2)
    with pytest.warns(RuntimeWarning, match="ran out of GPU memory; it runs eagerly"):
        for _ in range(9):
            step()
    assert attempts == [2, 6]  # the capture at call 2, then 3 eager calls, then again
    assert ran == ["eager"] * 6 + ["replayed"] * 3


def test_a_capture_that_fails_otherwise_still_raises(monkeypatch):
    from cellsearch.train import steps

    def captured(self):
        raise RuntimeError("an illegal memory access was encountered")

    monkeypatch.setattr(steps.Captured, "_captured", captured)
    monkeypatch.setattr(steps.Captured, "_eagerly", lambda self: None)
    step = steps.Captured(lambda: None, capture=True, warmup=1)
    step()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        step()
