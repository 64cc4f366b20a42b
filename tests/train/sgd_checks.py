"""Checks of `kernels.sgd` against the clipped SGD written out in torch, run by test_sgd.py in
a process of its own (Triton's CPU interpreter needs TRITON_INTERPRET=1 set before
`triton.language` is imported)."""

import torch

from cellsearch.engine.kernels.sgd import BLOCK, GroupedSGD, clipped_sgd_


def reference(parameters, grads, rates, max_norms):
    """Per member: zero the non-finite elements, one norm over all gradients, scale, step."""
    K = parameters[0].shape[0]
    clean = [torch.zeros_like(p) if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
             for p, g in zip(parameters, grads)]
    norms = torch.stack([torch.cat([g[k].flatten() for g in clean]).double().norm() for k in range(K)])
    scale = rates.double() * torch.clamp(max_norms.double() / (norms + 1e-6), max=1.0)
    return [p.double() - scale.view(-1, *[1] * (p.dim() - 1)) * g.double()
            for p, g in zip(parameters, clean)]


def check_update(device: str = "cpu") -> None:
    K = 3
    generator = torch.Generator().manual_seed(0)
    shapes = [(K, 7, 5), (K, BLOCK + 904), (K, 4), (K, 6, 9)]  # the second spans two blocks
    sizes = [torch.Size(s[1:]).numel() for s in shapes]
    flat = torch.randn(K, sum(sizes), generator=generator)
    grads = [torch.randn(s, generator=generator) * 3 for s in shapes]
    grads[2] = None  # a parameter no output depends on
    grads[3] = torch.randn(K, 9, 6, generator=generator).transpose(1, 2)  # not contiguous
    grads[0][1, 2, 3] = float("nan")  # member 1 diverged in one element...
    grads[1][1, 17] = float("inf")
    grads[1][2, 4999] = float("-inf")
    rates = torch.tensor([0.5, 2.0, 1.0])
    max_norms = torch.tensor([1e3, 1.0, 5.0])  # member 0 unclipped, members 1 and 2 clipped
    flat, rates, max_norms = flat.to(device), rates.to(device), max_norms.to(device)
    grads = [None if g is None else g.to(device) for g in grads]  # (keeping their strides)
    parameters, offset = [], 0
    for shape, size in zip(shapes, sizes):
        parameters.append(flat[:, offset:offset + size].view(shape))
        offset += size
    expected = reference([p.clone() for p in parameters], grads, rates, max_norms)
    untouched = parameters[2].clone()
    clipped_sgd_(flat, sizes, grads, rates, max_norms)
    for ours, theirs in zip(parameters, expected):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(parameters[2], untouched)
    assert torch.isfinite(flat).all()


def check_zero_gradient_keeps_parameters() -> None:
    flat = torch.randn(2, 10)
    before = flat.clone()
    clipped_sgd_(flat, [10], [torch.zeros(2, 10)], torch.ones(2), torch.ones(2))
    assert torch.equal(flat, before)


def population(K, shapes, generator, device):
    """Parameters in one flat (K, P) tensor as `steps` keeps them, gradients of the same shapes."""
    sizes = [torch.Size(s).numel() for s in shapes]
    flat = torch.randn(K, sum(sizes), generator=generator).to(device)
    parameters, offset = [], 0
    for shape, size in zip(shapes, sizes):
        parameters.append(flat[:, offset:offset + size].view(K, *shape))
        offset += size
    grads = [(torch.randn(K, *shape, generator=generator) * 3).to(device) for shape in shapes]
    return parameters, grads


def check_grouped_update(device: str = "cpu") -> None:
    """Three populations of different sizes and shapes in one `GroupedSGD`, against the
    reference per population: strided gradients (transposed, a corner of a wider one, a
    broadcast), non-finite elements, a missing gradient, rows of several blocks."""
    generator = torch.Generator().manual_seed(1)
    a, a_grads = population(2, [(5, 5), (BLOCK + 904,), (5,)], generator, device)
    b, b_grads = population(3, [(7, 7), (4, 7), (7,)], generator, device)
    c, c_grads = population(1, [(3, 2), (6,)], generator, device)
    a_grads[0] = torch.randn(2, 5, 5, generator=generator).to(device).transpose(1, 2)
    a_grads[1][1, 17] = float("nan")
    a_grads[2] = None
    b_grads[0] = torch.randn(3, 9, 9, generator=generator).to(device)[:, :7, :7]  # a corner
    b_grads[1][0, 3, 3] = float("-inf")
    c_grads[1] = torch.randn(1, 1, generator=generator).to(device).expand(1, 6)
    rates = [torch.tensor(r, device=device) for r in ([0.5, 2.0], [1.0, 1.0, 3.0], [0.2])]
    norms = [torch.tensor(n, device=device) for n in ([1e3, 1.0], [5.0, 1e3, 0.5], [1e3])]
    populations = [(a, a_grads), (b, b_grads), (c, c_grads)]
    expected = [reference([p.clone() for p in ps], gs, r, n)
                for (ps, gs), r, n in zip(populations, rates, norms)]
    untouched = a[2].clone()
    grouped = GroupedSGD([(ps, r, n) for (ps, _), r, n in zip(populations, rates, norms)])
    grouped([g for _, gs in populations for g in gs])
    for (ps, _), theirs in zip(populations, expected):
        for ours, their in zip(ps, theirs):
            torch.testing.assert_close(ours.double(), their, rtol=1e-5, atol=1e-6)
    assert torch.equal(a[2], untouched)


def check_grouped_equals_the_single_kernels(device: str = "cpu") -> None:
    """One population through `GroupedSGD` and through `clipped_sgd_`: the same update."""
    generator = torch.Generator().manual_seed(2)
    parameters, grads = population(3, [(6, 4), (2 * BLOCK + 5,)], generator, device)
    grads[0] = grads[0].transpose(1, 2).contiguous().transpose(1, 2)
    flat = torch.cat([p.flatten(1) for p in parameters], dim=1)
    rates, norms = torch.tensor([1.0, 0.5, 2.0], device=device), torch.full((3,), 4.0, device=device)
    clipped_sgd_(flat, [24, 2 * BLOCK + 5], grads, rates, norms)
    GroupedSGD([(parameters, rates, norms)])(grads)
    torch.testing.assert_close(torch.cat([p.flatten(1) for p in parameters], dim=1), flat)


def check_mixed_steps_train_alike_with_grouped_sgd(device: str = "cpu", capture: bool = False
                                                   ) -> None:
    """A mixed step of an LSTM, a GRU and MUT1 population (different sizes, layers and rates,
    one clipping) trains as with each population's own update."""
    from cellsearch.cells import zoo
    from cellsearch.tasks.memorize import Memorize
    from cellsearch.train.model import PopulationModel
    from cellsearch.train.steps import MixedSteps, PopulationSteps

    task = Memorize(seed=0, epoch_windows=6, valid_samples=30, test_samples=30)
    trained = []
    for grouped in (False, True):
        populations = []
        for i, (name, K, n, layers) in enumerate((("lstm", 2, 12, 2), ("gru", 3, 17, 1),
                                                  ("mut1", 1, 9, 2))):
            model = PopulationModel(zoo.get(name), K, task.input_size, task.output_size, n,
                                    layers, "embedding")
            model.reset_parameters([1.0] * K, [10 * i + k for k in range(K)])
            model.to(device)
            steps = PopulationSteps(model, task, 8, 10, torch.full((K,), 2.0, device=device),
                                    None, capture=False)
            steps.learning_rates.copy_(torch.linspace(0.5, 2.0, K))
            populations.append(steps)
        populations[1].max_norms.fill_(0.05)  # the GRU's members clip
        together = MixedSteps(populations, capture=capture, grouped_sgd=grouped)
        initial = [steps.flat_parameters.clone() for steps in populations]
        for batch in task.batches("train", 8, 10, epoch=0):
            for steps in populations:
                steps.load(batch)
            together.train_step()
        trained.append([steps.flat_parameters.clone() for steps in populations])
    for own, grouped, before in zip(*trained, initial):
        assert not torch.allclose(own, before)  # (training moved every population)
        torch.testing.assert_close(grouped, own, rtol=1e-4, atol=1e-5)


def check_usable_where_it_agrees_and_says_why_where_not() -> None:
    import warnings

    from cellsearch.engine.kernels import sgd

    assert sgd.grouped_usable("cpu")
    sgd.grouped_usable.cache_clear()
    real = sgd.GroupedSGD.__call__
    sgd.GroupedSGD.__call__ = lambda self, grads: None  # an update that does nothing
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not sgd.grouped_usable("cpu")
        assert "disagrees with torch's update" in str(caught[0].message)
    finally:
        sgd.GroupedSGD.__call__ = real
        sgd.grouped_usable.cache_clear()


if __name__ == "__main__":
    check_update()
    check_zero_gradient_keeps_parameters()
    check_grouped_update()
    check_grouped_equals_the_single_kernels()
    check_mixed_steps_train_alike_with_grouped_sgd()
    check_usable_where_it_agrees_and_says_why_where_not()
    print("all checks passed")
