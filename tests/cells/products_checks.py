"""Checks of `engine.kernels.products` against the products in torch, run by test_products.py in
a process of its own under Triton's CPU interpreter (see tests/interpreted.py)."""

import warnings

import torch

from cellsearch.engine.kernels import products as grouped
from cellsearch.engine.products import Product, in_torch


def leaf(*shape, generator, device="cpu"):
    return torch.randn(*shape, generator=generator).to(device).requires_grad_()


def products_of(generator, device="cpu"):
    """Products as a mixed step has them, and a few it never has: two reading one input (a
    GRU's), matrices transposed (static parts) and not (output layers), biases that are
    parameters, sums of them, or none, an input strided, tiles of several rows and columns and
    a reduction of several steps, and members that differ."""
    x = leaf(2, 130, 40, generator=generator, device=device)  # 3 row tiles, 2 reduction steps
    w1, w2, w3 = (leaf(2, 70, 40, generator=generator, device=device) for _ in range(3))
    b1, b2, b3 = (leaf(2, 70, generator=generator, device=device) for _ in range(3))
    y = leaf(3, 9, 130, generator=generator, device=device)  # its transpose is read
    v = leaf(3, 9, 5, generator=generator, device=device)
    u = leaf(1, 130, 6, generator=generator, device=device)
    c = leaf(1, 6, 11, generator=generator, device=device)
    b4 = leaf(3, 8, generator=generator, device=device)
    leaves = [x, w1, w2, w3, b1, b2, b3, y, v, b4, u, c]
    products = [
        Product(x, [w1.transpose(1, 2), w2.transpose(1, 2)], [b1, b2 - b3]),
        Product(x, [w3.transpose(1, 2)], [None]),
        Product(y.transpose(1, 2), [v], [b4[:, 2:7]]),
        Product(u, [c], [None]),
    ]
    return products, leaves


def values_and_gradients(outputs, leaves, generator):
    upstream = [torch.randn(o.shape, generator=generator).to(o.device) for o in outputs]
    loss = sum((o * g).sum() for o, g in zip(outputs, upstream))
    return [o.detach() for o in outputs], list(torch.autograd.grad(loss, leaves))


def check_products_match_torch(device: str = "cpu") -> None:
    products, leaves = products_of(torch.Generator().manual_seed(0), device)
    ours = values_and_gradients(grouped.together(products), leaves,
                                torch.Generator().manual_seed(1))
    double = [Product(p.x.double(), [w.double() for w in p.weights],
                      [None if b is None else b.double() for b in p.biases]) for p in products]
    theirs = values_and_gradients([in_torch(p) for p in double], leaves,
                                  torch.Generator().manual_seed(1))
    for a, b in zip([*ours[0], *ours[1]], [*theirs[0], *theirs[1]], strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-4)


def check_kept_tables_are_rewritten_each_call(device: str = "cpu") -> None:
    """A call site's tables, kept, serve later calls with other tensors (an eager step's)."""
    generator = torch.Generator().manual_seed(2)
    tables: dict = {}
    for _ in range(2):
        products, leaves = products_of(generator, device)
        ours = values_and_gradients(grouped.together(products, tables, "site"), leaves,
                                    torch.Generator().manual_seed(3))
        theirs = values_and_gradients([in_torch(p) for p in products], leaves,
                                      torch.Generator().manual_seed(3))
        for a, b in zip([*ours[0], *ours[1]], [*theirs[0], *theirs[1]], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert list(tables) == ["site"]


def check_products_it_cannot_form_are_refused() -> None:
    """Shapes that disagree, float64, a tensor in two roles."""
    generator = torch.Generator().manual_seed(4)
    x, w = leaf(2, 5, 3, generator=generator), leaf(2, 3, 4, generator=generator)
    b = leaf(1, 4, generator=generator)
    for products in ([Product(x, [w], [b])], [Product(x, [w.transpose(1, 2)], [None])],
                     [Product(x[:1], [w], [None])], [Product(x.double(), [w.double()], [None])],
                     [Product(x, [w], [None]), Product(w, [x], [None])]):
        try:
            grouped.together(products)
        except ValueError as error:
            assert "product" in str(error)
        else:
            raise AssertionError(f"{products} were not refused")


def check_mixed_steps_train_alike_with_grouped_products(device: str = "cpu",
                                                       capture: bool = False) -> None:
    """A mixed step of an LSTM, a GRU and MUT1 population (different sizes and layers; MUT1's
    static parts are not all products) trains as with torch's products, training and
    evaluating; captured (on CUDA), each step replays its own tables."""
    from cellsearch.cells import zoo
    from cellsearch.tasks.memorize import Memorize
    from cellsearch.train.model import PopulationModel
    from cellsearch.train.steps import MixedSteps, PopulationSteps

    task = Memorize(seed=0, epoch_windows=6, valid_samples=60, test_samples=30)
    trained = []
    for kernel in ("torch", "triton"):
        populations = []
        for i, (name, K, n, layers) in enumerate((("lstm", 2, 12, 2), ("gru", 3, 17, 1),
                                                  ("mut1", 1, 9, 2))):
            model = PopulationModel(zoo.get(name), K, task.input_size, task.output_size, n,
                                    layers, "embedding")
            model.reset_parameters([1.0] * K, [10 * i + k for k in range(K)])
            model.to(device)
            populations.append(PopulationSteps(model, task, 8, 10,
                                               torch.full((K,), 2.0, device=device), None,
                                               capture=False))
        together = MixedSteps(populations, capture=capture, products_kernel=kernel)
        for batch in task.batches("train", 8, 10, epoch=0):
            for steps in populations:
                steps.load(batch)
            together.train_step()
        for batch in task.batches("valid", 8, 10):
            for steps in populations:
                steps.load(batch)
            together.eval_step()
        trained.append([(steps.flat_parameters.clone(),
                         {name: value.clone() for name, value in steps.totals.items()})
                        for steps in populations])
    for (own, own_totals), (ours, our_totals) in zip(*trained):
        torch.testing.assert_close(ours, own, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(our_totals, own_totals, rtol=1e-4, atol=1e-4)


def check_usable_where_it_agrees_and_says_why_where_not() -> None:
    assert grouped.usable("cpu")
    grouped.usable.cache_clear()
    real = grouped.launch
    grouped.launch = lambda *args: None  # launches that do nothing
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not grouped.usable("cpu")
        assert "disagrees with torch" in str(caught[0].message)
    finally:
        grouped.launch = real
        grouped.usable.cache_clear()


if __name__ == "__main__":
    check_products_match_torch()
    check_kept_tables_are_rewritten_each_call()
    check_products_it_cannot_form_are_refused()
    check_mixed_steps_train_alike_with_grouped_products()
    check_usable_where_it_agrees_and_says_why_where_not()
    print("all checks passed")
