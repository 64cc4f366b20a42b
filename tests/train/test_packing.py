import torch

from cellsearch.cells import zoo
from cellsearch.train import packing
from cellsearch.train.packing import member_bytes, population_limit


def test_member_bytes_counts_parameters_activations_and_logits():
    graph = zoo.get("lstm")
    small = member_bytes(graph, 250_000, 171, 1, 40)
    assert small >= 3 * 250_000 * 4  # weights, gradients, concatenated copies
    assert member_bytes(graph, 250_000, 171, 2, 40) > small  # more layers keep more values
    assert member_bytes(graph, 250_000, 171, 1, 10_000) > small  # a 10k softmax's logits
    assert member_bytes(zoo.get("gru"), 250_000, 171, 1, 40) < small  # fewer nodes


def test_population_limit_follows_free_memory(monkeypatch):
    graph = zoo.get("lstm")
    assert population_limit(graph, 250_000, 171, 1, 40, torch.device("cpu")) is None
    one = member_bytes(graph, 250_000, 171, 1, 40)
    monkeypatch.setattr(packing.torch.cuda, "mem_get_info", lambda device: (100 * one, 200 * one))
    assert population_limit(graph, 250_000, 171, 1, 40, torch.device("cuda")) == 50
    monkeypatch.setattr(packing.torch.cuda, "mem_get_info", lambda device: (one // 10, one))
    assert population_limit(graph, 250_000, 171, 1, 40, torch.device("cuda")) == 1
