"""The training step's clipped SGD update against the formula of §3.7, computed independently."""

import pytest
import torch

from cellsearch.cells import zoo
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
