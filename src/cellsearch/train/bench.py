"""Training throughput, side by side in one process: `torch.nn.LSTM` (cuDNN on a GPU) against the
population engine at K = 1, 8, 32, 128 and a mutated graph, on the paper's shapes (§3.5, §3.7);
plus the wall time of the search's two recurring costs, the memorization filter for one candidate
and 20 settings of one architecture on arith under the search schedule.

A "training token" is one timestep of one row of one model, so K models on a 20 x 35 window train
K * 700 tokens. FLOP/s counts 6 x matmul parameters x tokens (forward and backward of every
matrix product; the embedding is a lookup, not a matmul).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cellsearch.cells import zoo
from cellsearch.cells.graph import CellGraph
from cellsearch.evaluation.budget import hidden_size_for_budget
from cellsearch.tasks import Batch, Task
from cellsearch.train.model import PopulationModel, default_engine
from cellsearch.train.steps import PopulationSteps

H100_TF32_PEAK = 495e12  # dense TF32 FLOP/s of an H100 SXM
BATCH, STEPS = 20, 35

# task -> (vocabulary, layers, parameter budget): the shapes of the table
SHAPES = {
    "memorize": (28, 1, 25_000),
    "arith": (40, 1, 250_000),
    "arith-1m": (40, 2, 1_000_000),
    "ptb": (10_000, 2, 5_000_000),
}


@dataclass(frozen=True)
class Measurement:
    engine: str
    population: int
    hidden_size: int
    tokens_per_second: float
    ratio_to_cudnn: float
    tflops: float
    fraction_of_peak: float


class _RandomTokens(Task):
    """A stand-in task serving one fixed random window: throughput does not depend on the data."""

    output_kind, metric = "softmax", "accuracy"

    def __init__(self, vocabulary: int):
        self.name = "bench"
        self.input_size = self.output_size = vocabulary
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, vocabulary, size=(STEPS + 1, BATCH))
        self.batch = Batch(tokens[:-1], tokens[1:], np.ones((STEPS, BATCH), np.float32),
                           np.zeros(BATCH, bool))

    def batches(self, split, batch_size=BATCH, num_steps=STEPS, epoch=0):
        yield self.batch

    def describe(self):
        return {}

    def samples(self, count, seed=0):
        return []


def _timed(step, device, repeats: int, rounds: int = 3) -> float:
    """Seconds per step: the best of `rounds` rounds of `repeats` steps (these machines are
    noisy, and every engine, cuDNN included, gets the same treatment)."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(rounds):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cudnn_step_seconds(vocabulary: int, layers: int, hidden: int, device, repeats: int) -> float:
    """Seconds per training step of the standard PyTorch model: embedding, nn.LSTM, linear,
    cross-entropy, clipping, SGD."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(vocabulary, hidden).to(device)
    lstm = torch.nn.LSTM(hidden, hidden, layers).to(device)
    output = torch.nn.Linear(hidden, vocabulary).to(device)
    parameters = [*embedding.parameters(), *lstm.parameters(), *output.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    task = _RandomTokens(vocabulary)
    inputs = torch.from_numpy(task.batch.inputs).to(device)
    targets = torch.from_numpy(task.batch.targets).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        hidden_states, _ = lstm(embedding(inputs))
        logits = output(hidden_states)
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, vocabulary), targets.reshape(-1), reduction="sum") / BATCH
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()

    return _timed(step, device, repeats)


def population_step_seconds(graph: CellGraph, vocabulary: int, layers: int, hidden: int,
                            population: int, device, repeats: int, capture: bool = True,
                            engine: str | None = None) -> float:
    task = _RandomTokens(vocabulary)
    model = PopulationModel(graph, population, vocabulary, vocabulary, hidden, layers, "embedding",
                            engine or default_engine(device))
    model.reset_parameters([1.0] * population, list(range(population)))
    model.to(device)
    norms = torch.full((population,), 5.0, device=device)
    steps = PopulationSteps(model, task, BATCH, STEPS, norms, None,
                            capture=capture and device.type == "cuda")
    steps.learning_rates.fill_(0.1)
    steps.load(task.batch)
    return _timed(steps.train_step, device, repeats)


def matmul_parameters(graph: CellGraph, vocabulary: int, layers: int, hidden: int) -> int:
    return layers * graph.num_matrices * hidden * hidden + hidden * vocabulary


def mutated_graph(seed: int = 0) -> CellGraph:
    from cellsearch.cells.mutate import mutate

    return mutate(zoo.get("gru"), random.Random(seed)).graph


def throughput(task: str = "arith", cell: str = "lstm", device: str = "cuda",
               populations=(1, 8, 32, 128), repeats: int = 20,
               compare: tuple[str, ...] = ()) -> list[Measurement]:
    """tokens/s of cuDNN's LSTM and of our engine (graph `cell`, then a mutated graph at K=32),
    with the default engine for the device; each engine in `compare` (`model.ENGINES`) is also
    measured at the smallest and largest population."""
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vocabulary, layers, budget = SHAPES[task]
    rows = []

    def hidden_for(graph: CellGraph) -> int:
        return hidden_size_for_budget(
            budget, matrices_per_layer=graph.num_matrices, biases_per_layer=graph.num_biases,
            num_layers=layers, input_size=vocabulary, output_size=vocabulary,
            input_kind="embedding")

    def record(name, graph, hidden, population, seconds, base):
        tokens = population * BATCH * STEPS / seconds
        flops = 6 * matmul_parameters(graph, vocabulary, layers, hidden) * tokens
        rows.append(Measurement(name, population, hidden, tokens, tokens / base, flops / 1e12,
                                flops / H100_TF32_PEAK))

    lstm = zoo.get("lstm")
    hidden = hidden_for(lstm)
    cudnn_seconds = cudnn_step_seconds(vocabulary, layers, hidden, torch_device, repeats)
    base = BATCH * STEPS / cudnn_seconds
    record("torch.nn.LSTM", lstm, hidden, 1, cudnn_seconds, base)
    graph = zoo.resolve(cell)
    hidden = hidden_for(graph)
    engine = default_engine(torch_device)
    measured = []
    for population in populations:
        try:
            seconds = population_step_seconds(graph, vocabulary, layers, hidden, population,
                                              torch_device, repeats)
        except torch.cuda.OutOfMemoryError:
            break
        measured.append(population)
        record(f"cellsearch {cell} ({engine})", graph, hidden, population, seconds, base)
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()  # the next, larger population starts from a clean pool
    for other in compare if measured else ():
        for population in sorted({measured[0], measured[-1]}):
            seconds = population_step_seconds(graph, vocabulary, layers, hidden, population,
                                              torch_device, repeats, engine=other)
            record(f"cellsearch {cell} ({other})", graph, hidden, population, seconds, base)
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
    mutant = mutated_graph()
    hidden = hidden_for(mutant)
    population = 32 if torch_device.type == "cuda" else 1
    seconds = population_step_seconds(mutant, vocabulary, layers, hidden, population,
                                      torch_device, repeats)
    record(f"cellsearch mutated gru ({engine})", mutant, hidden, population, seconds, base)
    return rows


def mixed(cells: int, task: str = "arith", device: str = "cuda", population: int = 4,
          windows: int = 200) -> list[dict]:
    """Training tokens/s of `cells` different cells at K=`population` each, trained together by
    `--executor interleaved`'s executor and by `--executor mixed`'s (the mixed engine), against
    one of them at K=`population` and at K=`cells` x `population`, in the same run: one epoch of
    `windows` windows each, on the task's bench shape. Rows: what, cells, K, seconds, tokens,
    tokens/s."""
    from cellsearch.evaluation.settings import Settings
    from cellsearch.executors import EvaluationJob, InterleavedExecutor

    _, layers, budget = SHAPES[task]
    real_task = "arith" if task.startswith("arith") else task
    graphs = [zoo.get(name) for name in zoo.PAPER_CELLS][:cells]
    seed = 0
    while len(graphs) < cells:  # distinct mutants of the GRU beyond the zoo
        candidate = mutated_graph(seed)
        seed += 1
        if all(candidate != graph for graph in graphs):
            graphs.append(candidate)
    options = dict(max_epochs=1, epoch_windows=windows, valid_samples=50, test_samples=50)

    def job(graph: CellGraph, count: int, offset: int = 0) -> EvaluationJob:
        settings = tuple(
            Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=layers,
                     num_parameters=budget, seed=offset + k) for k in range(count))
        return EvaluationJob(graph.canonical_hash(), graph.to_json(), real_task, settings,
                             options)

    def timed(jobs: list[EvaluationJob], mixed: bool = False) -> tuple[float, int]:
        executor = InterleavedExecutor(device=device, mixed=mixed)
        started = time.perf_counter()
        futures = [executor.submit(item) for item in jobs]
        results = [r for future in executor.as_completed(futures) for r in future.result()]
        if any(not result.ok for result in results):
            raise RuntimeError(f"a bench run failed: {results[0].reason}")
        return time.perf_counter() - started, sum(result.tokens for result in results)

    for mixed in (False, True):  # warm-up, the mixed engine's kernels and check included
        timed([job(graphs[0], population)], mixed)
    together = [job(graph, population, 100 * i) for i, graph in enumerate(graphs)]
    rows = []
    for what, jobs, count, k, mixed in (
        ("one cell", [job(graphs[0], population)], 1, population, False),
        ("different cells together", together, cells, population, False),
        ("one cell, every member", [job(graphs[0], cells * population)], 1, cells * population,
         False),
        ("different cells, mixed engine", together, cells, population, True),
    ):
        seconds, tokens = timed(jobs, mixed)
        rows.append({"what": what, "cells": count, "K": k, "seconds": round(seconds, 3),
                     "tokens": tokens, "tokens_per_second": tokens / seconds})
    return rows


def search_costs(device: str = "cuda", settings_count: int = 20, seed: int = 0,
                 on_cost=None) -> dict:
    """Wall seconds of the memorization filter (one random setting of the LSTM, search schedule)
    and of `settings_count` random settings of the LSTM on arith under the search schedule;
    `on_cost(task, cost)` hears each as soon as it is measured."""
    from cellsearch.evaluation.settings import SearchSpace
    from cellsearch.search.config import SearchConfig
    from cellsearch.train.evaluate import evaluate

    search = SearchConfig()  # the paper's filter task and threshold
    rng = random.Random(seed)
    costs = {}
    for task, count in ((search.filter_task, 1), ("arith", settings_count)):
        settings = SearchSpace.for_search(task).sample_distinct(rng, count)
        start = time.perf_counter()
        # The filter only asks whether the cell reaches its threshold (§3.1), as the search does.
        stop_at = search.filter_threshold if task == search.filter_task else None
        results = evaluate(zoo.get("lstm"), task, settings, device=device, stop_at=stop_at)
        wall = time.perf_counter() - start
        costs[task] = {
            "settings": count,
            "wall_seconds": wall,
            "best_accuracy": max((r.value for r in results if r.ok), default=float("nan")),
            "epochs": [r.epochs for r in results],
        }
        if on_cost is not None:
            on_cost(task, costs[task])
    costs["arith"]["settings_per_gpu_hour"] = settings_count * 3600 / costs["arith"]["wall_seconds"]
    return costs


def as_dicts(rows: list[Measurement]) -> list[dict]:
    return [asdict(row) for row in rows]
