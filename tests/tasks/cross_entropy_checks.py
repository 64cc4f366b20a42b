"""Checks of `engine.kernels.cross_entropy` against torch, run by test_cross_entropy.py in a process
of their own: Triton's CPU interpreter runs its library reductions (tl.max, tl.sum, tl.argmax)
only if `triton.language` was imported with TRITON_INTERPRET=1 set."""

import torch
import torch.nn.functional as F

from cellsearch.engine.kernels.cross_entropy import softmax_cross_entropy
from cellsearch.tasks.metrics import softmax_stats


def torch_reference(logits, targets):
    T, K, B, V = logits.shape
    expanded = targets.unsqueeze(1).expand(T, K, B)
    nll = F.cross_entropy(logits.reshape(-1, V), expanded.reshape(-1), reduction="none")
    hits = (logits.argmax(dim=-1) == expanded).float()
    return nll.view(T, K, B), hits


def check_against_torch_in_the_models_layout(V: int, device: str = "cpu",
                                             with_bias: bool = False) -> None:
    T, K, B = 3, 2, 4
    generator = torch.Generator().manual_seed(V)
    # the model's logits: (K, T, B, V) memory seen as (T, K, B, V)
    logits = (torch.randn(K, T, B, V, generator=generator) * 3).transpose(0, 1)
    logits[1, 0, 2, :] = 0.5  # a row of ties: argmax is the first index
    targets = torch.randint(0, V, (T, B), generator=generator)
    targets[1, 2] = 0
    targets[2, 1] = V - 1
    weights = torch.rand(T, K, B, generator=generator)
    bias = torch.randn(K, V, generator=generator) if with_bias else torch.zeros(K, V)
    bias[0] = 0.0  # (member 0 keeps the row of ties)
    logits, targets, weights = logits.to(device), targets.to(device), weights.to(device)
    ours, theirs = (t.detach().clone().requires_grad_() for t in (logits, logits))
    assert ours.stride() == logits.stride()  # (clone keeps the strides)
    our_bias, their_bias = (bias.to(device).clone().requires_grad_() for _ in range(2))

    nll, hits = softmax_cross_entropy(ours, targets, our_bias if with_bias else None)
    expected_nll, expected_hits = torch_reference(theirs + their_bias.view(1, K, 1, V), targets)
    torch.testing.assert_close(nll, expected_nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(hits, expected_hits) and hits[1, 0, 2] == 1, (hits, expected_hits)
    (nll * weights).sum().backward()
    (expected_nll * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)
    if with_bias:
        torch.testing.assert_close(our_bias.grad, their_bias.grad, rtol=1e-5, atol=1e-5)


def check_gradient_keeps_the_logits_layout() -> None:
    logits = torch.randn(2, 3, 4, 5).transpose(0, 1).requires_grad_()  # (3, 2, 4, 5) view
    captured = {}
    logits.register_hook(lambda grad: captured.update(stride=grad.stride()))
    nll, _ = softmax_cross_entropy(logits, torch.zeros(3, 4, dtype=torch.long))
    nll.sum().backward()
    assert captured["stride"] == logits.stride(), captured  # what the output layer's backward reads


def check_softmax_stats_with_kernels() -> None:
    T, K, B, V = 5, 3, 2, 11
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(T, K, B, V, generator=generator)
    targets = torch.randint(0, V, (T, B), generator=generator)
    mask = (torch.rand(T, B, generator=generator) > 0.3).float()
    bias = torch.randn(K, V, generator=generator)
    plain = softmax_stats(logits + bias.view(1, K, 1, V), targets, mask)
    for kernels in (False, True):
        for key, value in softmax_stats(logits, targets, mask, bias, kernels).items():
            torch.testing.assert_close(value, plain[key])


def check_training_with_kernels_follows_the_torch_loss() -> None:
    """The fused engine's training, whose loss runs in these kernels with the output bias left
    to them, against the eager engine's (torch's loss, biased logits): the same validation
    metrics after an epoch."""
    from cellsearch.cells import zoo
    from cellsearch.evaluation.settings import Settings
    from cellsearch.train.evaluate import evaluate

    settings = [Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=1,
                         num_parameters=3_000, seed=0)]
    options = dict(max_epochs=1, epoch_windows=1, valid_samples=12, test_samples=12)
    eager = evaluate(zoo.get("gru"), "arith", settings, engine="eager", **options)[0]
    fused = evaluate(zoo.get("gru"), "arith", settings, engine="fused", **options)[0]
    for key in ("nll", "accuracy"):
        assert abs(eager.valid[key] - fused.valid[key]) <= 1e-5 * abs(eager.valid[key]), key


def check_grouped_loss_sums_are_each_populations(V: int, device: str = "cpu") -> None:
    """`grouped_loss_sums` of populations of different K, each with its own targets and mask,
    against each one's `softmax_stats` loss sum in torch: values, and the logits' gradients
    (kept in their layout) for a loss that weighs the members differently."""
    from cellsearch.engine.kernels.cross_entropy import grouped_loss_sums

    T, B = 3, 5
    generator = torch.Generator().manual_seed(V)
    logits, targets, masks = [], [], []
    for K in (2, 1, 3):
        logits.append((torch.randn(K, T, B, V, generator=generator) * 3).transpose(0, 1)
                      .to(device).requires_grad_())
        targets.append(torch.randint(0, V, (T, B), generator=generator).to(device))
        masks.append((torch.rand(T, B, generator=generator) > 0.3).float().to(device))
    theirs = [x.detach().clone().requires_grad_() for x in logits]
    ours = grouped_loss_sums(logits, targets, masks)
    expected = torch.cat([softmax_stats(x, y, mask, loss_only=True)["loss_sum"]
                          for x, y, mask in zip(theirs, targets, masks)])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    weights = torch.linspace(0.5, 2.0, len(ours), device=device)
    our_grads = torch.autograd.grad((ours * weights).sum(), logits)
    their_grads = torch.autograd.grad((expected * weights).sum(), theirs)
    for a, b, x in zip(our_grads, their_grads, logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.stride() == x.stride()


def check_mixed_steps_train_alike_with_the_grouped_loss(device: str = "cpu",
                                                        capture: bool = False) -> None:
    """A mixed step of an LSTM, a GRU and MUT1 population (different sizes, layers and
    normalizations) trained with the grouped loss takes each population's own steps, to float
    rounding; captured (on CUDA), the step replays the loss's tables."""
    from cellsearch.cells import zoo
    from cellsearch.tasks.memorize import Memorize
    from cellsearch.train.model import PopulationModel
    from cellsearch.train.steps import MixedSteps, PopulationSteps

    task = Memorize(seed=0, epoch_windows=5, valid_samples=30, test_samples=30)

    def populations():
        made = []
        for i, (name, K, n, layers, how) in enumerate((("lstm", 2, 12, 2, "targets"),
                                                       ("gru", 3, 17, 1, "minibatch"),
                                                       ("mut1", 1, 9, 2, "targets"))):
            model = PopulationModel(zoo.get(name), K, task.input_size, task.output_size, n,
                                    layers, "embedding")
            model.reset_parameters([1.0] * K, [10 * i + k for k in range(K)])
            model.to(device)
            made.append(PopulationSteps(model, task, 8, 10, torch.full((K,), 2.0, device=device),
                                        None, capture=False, loss_normalization=how))
            made[-1].learning_rates.fill_(0.5)
        return made

    alone, together = populations(), populations()
    mixed = MixedSteps(together, capture=capture, grouped_loss=True)
    for batch in task.batches("train", 8, 10, epoch=0):
        for steps in alone + together:
            steps.load(batch)
        for steps in alone:
            steps.train_step()
        mixed.train_step()
    for mine, theirs, untrained in zip(together, alone, populations()):
        torch.testing.assert_close(mine.flat_parameters, theirs.flat_parameters, rtol=1e-4,
                                   atol=1e-5)
        assert torch.equal(mine.finite, theirs.finite)
        assert not torch.allclose(mine.flat_parameters, untrained.flat_parameters)


if __name__ == "__main__":
    for V in (7, 40, 2100):  # one partial block; one block; several blocks
        for with_bias in (False, True):
            check_against_torch_in_the_models_layout(V, with_bias=with_bias)
    check_gradient_keeps_the_logits_layout()
    check_softmax_stats_with_kernels()
    check_training_with_kernels_follows_the_torch_loss()
    for V in (7, 2100):
        check_grouped_loss_sums_are_each_populations(V)
    check_mixed_steps_train_alike_with_the_grouped_loss()
    print("all checks passed")
