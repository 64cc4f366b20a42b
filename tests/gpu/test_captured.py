"""The CUDA-graph engine gives the same losses as eager mode (run on the GPU machine)."""

import random

import pytest
import torch

from cellsearch import zoo
from cellsearch.mutate import mutate
from cellsearch.tasks.arith import Arith
from cellsearch.train.evaluate import evaluate
from cellsearch.train.hyperparameters import Settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def graphs():
    yield from ((name, zoo.get(name)) for name in ("lstm", "gru", "mut1", "lstm-b"))
    for seed in range(3):
        yield f"mutated gru {seed}", mutate(zoo.get("gru"), random.Random(seed)).graph


@pytest.mark.parametrize("name, graph", list(graphs()), ids=lambda v: v if isinstance(v, str) else "")
def test_captured_equals_eager(name, graph):
    task = Arith(seed=0, epoch_windows=12, valid_samples=100, test_samples=100)
    settings = [Settings(init_scale=s, learning_rate=lr, max_grad_norm=5.0, num_layers=layers,
                         num_parameters=20_000, seed=i)
                for i, (s, lr, layers) in enumerate([(1.0, 0.5, 1), (0.7, 1.0, 1), (1.4, 0.2, 1)])]
    eager = evaluate(graph, task, settings, device="cuda", max_epochs=3, capture=False)
    captured = evaluate(graph, task, settings, device="cuda", max_epochs=3, capture=True)
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
