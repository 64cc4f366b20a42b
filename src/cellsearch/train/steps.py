"""The per-window work of population training — one training step and one evaluation step —
run eagerly, or on CUDA captured once into a CUDA graph and replayed.

A window's data is copied into static buffers, the recurrent state lives in static buffers that
each step overwrites with its final state (so it carries over to the next window), and the
per-member learning rates, clip norms, divergence flags and metric sums are static tensors too.
So a step takes no arguments and makes no host synchronisation, which is what lets a whole
training step — forward over the unrolled window, backward, per-member clipping and the SGD
update — be captured once per population and replayed for every later window: at the paper's
small shapes, launching kernels from Python, not arithmetic, is what limits an eager step.

Captured and eager steps run the same Python function, hence the same kernels and numbers.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from typing import Any, Callable, Generator, Iterable, Iterator

import numpy as np
import torch

from cellsearch.engine.kernels.copies import KINDS, Copies
from cellsearch.engine.kernels.copies import usable as copies_usable
from cellsearch.evaluation.settings import LOSS_NORMALIZATIONS
from cellsearch.tasks import Batch, Task
from cellsearch.tasks import metrics as task_metrics
from cellsearch.train.model import Dropout, PopulationModel, forward_together

WARMUP_CALLS = 2  # eager calls before capture (lazy initialisation of cuBLAS, autograd, ...)
# `kernels.sgd`'s kernels read and write less memory than torch's update but launch two kernels
# per parameter: below this many parameters (all members), launches bound the update and torch's
# fewer kernels win (H100, µs a training step, theirs against torch's: memorize K=1 516 / 473, the
# filter's 3 x 30 units 1218 / 1093, ptb K=1 (5M) 2193 / 2060, arith K=32 (8M) 2504 / 2408; above
# it they win: arith K=512 (128M) 14.27M against 14.05M tokens/s, ptb K=64 (300M) +8%).
SGD_KERNEL_PARAMETERS = 32 * 2**20
WINDOWS_PER_UPLOAD = 64
# After a capture that ran out of GPU memory, the step runs eagerly this many calls before it
# tries again (memory frees as other jobs end).
CAPTURE_RETRY_CALLS = 100
_FIELDS = ("inputs", "targets", "mask", "reset")
_CAPTURE_LOCK = threading.Lock()
_LIGHT_CAPTURE = True  # (see Captured._captured)


class Captured:
    """Calls `body()`; with `capture`, the first `warmup` calls run eagerly on a side stream, the
    next one is captured into a CUDA graph, and every call from then on replays it. A capture
    that runs out of GPU memory (a graph keeps a pool of its own) is not an error: the call runs
    eagerly, and so do the next CAPTURE_RETRY_CALLS before the capture is tried again."""

    def __init__(self, body: Callable[[], None], capture: bool, warmup: int = WARMUP_CALLS):
        self.body = body
        self.capture = capture
        self.warmup = warmup
        self.calls = 0
        self.capture_at = warmup  # the call that captures
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream: torch.cuda.Stream | None = None

    def __call__(self) -> None:
        if not self.capture:
            self.body()
        elif self.graph is not None:
            # Not while another thread captures: every graph replays the CUDA generator's state,
            # which in torch 2.11 refuses to replay during any capture ("Cannot prepare for
            # replay during capturing stage", seen with a thread per cell; later releases keep a
            # state per capture). A launch holds the lock only briefly.
            with _CAPTURE_LOCK:
                self.graph.replay()
        elif self.calls < self.capture_at:
            self._eagerly()
        else:
            with _CAPTURE_LOCK:
                try:
                    self.graph = self._captured()
                except Exception as error:
                    if not _out_of_memory(error):
                        raise
                    warnings.warn("capturing a training step ran out of GPU memory; it runs "
                                  "eagerly (slower) and tries again later", RuntimeWarning,
                                  stacklevel=2)
                    self.capture_at = self.calls + 1 + CAPTURE_RETRY_CALLS
            if self.graph is None:
                self._eagerly()  # (a failed capture recorded the work without doing it)
            else:
                self.graph.replay()  # capturing records the work without doing it
        self.calls += 1

    def _eagerly(self) -> None:
        # On the stream that will capture: cuBLAS sets up its workspace per stream.
        self.stream = self.stream or torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.body()
        torch.cuda.current_stream().wait_stream(self.stream)

    def _captured(self) -> torch.cuda.CUDAGraph:
        """The body captured on this step's side stream, without what `torch.cuda.graph` does
        first: synchronize the whole device and empty the device's and pinned host memory
        caches. With many populations on one GPU, every new one would stall all the others and
        make them allocate afresh. The capture only needs the work queued before it on the
        current stream, so its stream waits for that. "relaxed": memory that other work frees
        while we capture must not invalidate the capture. Should the light capture fail, the
        population captures as `torch.cuda.graph` does, and says so once."""
        global _LIGHT_CAPTURE
        if _LIGHT_CAPTURE:
            graph = torch.cuda.CUDAGraph()
            try:
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    graph.capture_begin(capture_error_mode="relaxed")
                    try:
                        self.body()
                    finally:
                        graph.capture_end()
                torch.cuda.current_stream().wait_stream(self.stream)
                return graph
            except RuntimeError as error:
                if _out_of_memory(error):
                    raise  # not the light capture's fault
                _LIGHT_CAPTURE = False
                warnings.warn(f"capturing a training step without synchronizing the device "
                              f"failed ({error}); capturing as torch.cuda.graph does from now",
                              RuntimeWarning, stacklevel=3)
        graph = torch.cuda.CUDAGraph()
        # The lock (held by the caller): entering `torch.cuda.graph` synchronizes the whole
        # device, which would break another thread's capture (populations of different shapes
        # train in threads, see `evaluate`).
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="relaxed"):
            self.body()
        return graph


def _out_of_memory(error: BaseException | None) -> bool:
    """Whether `error`, or one it was raised while handling (ending a capture the error broke
    raises again), is CUDA's out of memory."""
    while error is not None:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
        error = error.__context__
    return False


def _grouped_loss_usable(device: str) -> bool:
    # (imports Triton)
    from cellsearch.engine.kernels.cross_entropy import grouped_usable

    return grouped_usable(device)


def _grouped_usable(device: str) -> bool:
    from cellsearch.engine.kernels.sgd import grouped_usable  # (imports Triton)

    return grouped_usable(device)


def _gradients(objective: torch.Tensor, parameters: list[torch.Tensor]) -> list:
    """The objective's gradient for each parameter (None where it depends on none), as autograd
    forms it: not through `.grad`, whose accumulation would copy each gradient into its
    parameter's strides (the columns of the flat parameters), a launch per parameter a step."""
    return list(torch.autograd.grad(objective, parameters, allow_unused=True))


def _flatten(parameters: list[torch.Tensor]) -> torch.Tensor:
    """Moves the parameters, each (K, ...), into the columns of one (K, P) tensor, each parameter
    becoming a view of its columns; returns that tensor. (So the model must not move to another
    device or get new parameter tensors afterwards: the update would no longer reach them.)"""
    flat = torch.cat([p.detach().flatten(1) for p in parameters], dim=1)
    offset = 0
    for p in parameters:
        size = p[0].numel()
        p.data = flat[:, offset:offset + size].view_as(p)
        offset += size
    return flat


class PopulationSteps:
    def __init__(
        self,
        model: PopulationModel,
        task: Task,
        batch_size: int,
        num_steps: int,
        max_norms: torch.Tensor,  # (K,)
        dropout: Dropout | None,
        capture: bool,
        loss_normalization: str = "minibatch",
        mixer: Mixer | None = None,
    ):
        """With a `mixer`, the population's windows train and evaluate in steps shared with
        other populations (`Mixer`) instead of its own."""
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"loss_normalization must be one of {', '.join(LOSS_NORMALIZATIONS)},"
                f" got {loss_normalization!r}"
            )
        self.per_target = loss_normalization == "targets"
        device = max_norms.device
        K = model.population_size
        self.model, self.task = model, task
        self.parameters = list(model.parameters())
        self.flat_parameters = _flatten(self.parameters)
        self.max_norms, self.dropout = max_norms, dropout
        # the fused engine's loss kernels, which add the output bias themselves
        self.loss_kernels = task.output_kind == "softmax" and model.engine == "fused"
        self.sizes = [p[0].numel() for p in self.parameters]
        self.sgd_kernels = (model.engine == "fused"
                            and self.flat_parameters.numel() >= SGD_KERNEL_PARAMETERS)
        self.learning_rates = torch.zeros(K, device=device)
        self.finite = torch.ones(K, dtype=torch.bool, device=device)
        T, B = num_steps, batch_size
        frame = () if task.output_kind == "softmax" else (task.input_size,)
        data_type = torch.long if task.output_kind == "softmax" else torch.float32
        self.inputs = torch.zeros((T, B, *frame), dtype=data_type, device=device)
        self.targets = torch.zeros((T, B, *frame), dtype=data_type, device=device)
        self.mask = torch.zeros((T, B), device=device)
        self.reset = torch.ones(B, dtype=torch.bool, device=device)
        self.state = model.initial_state(B)
        self.totals: dict[str, torch.Tensor] | None = None
        self.train_step = Captured(self._train, capture)
        self.eval_step = Captured(self._evaluate, capture)
        self.mixer = mixer
        # with a mixer on a GPU, windows load in its flush (decided once: `load` runs a window)
        self.loads_with_mixer = (mixer is not None and device.type == "cuda"
                                 and copies_usable(str(device)))

    def load(self, batch: Batch | list[torch.Tensor]) -> None:
        """Copy one window (a Batch, or its fields as tensors from `uploaded`) into the step's
        static buffers; with a mixer on a GPU, just before its step, with every population's
        whose step runs then (`Mixer.loading`)."""
        values = [getattr(batch, f) for f in _FIELDS] if isinstance(batch, Batch) else batch
        buffers = (self.inputs, self.targets, self.mask, self.reset)
        if self.loads_with_mixer and batch is values:
            self.mixer.loading(self, list(zip(buffers, values)))
            return
        for buffer, value in zip(buffers, values):
            value = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            buffer.copy_(value, non_blocking=True)

    def uploaded(self, batches: Iterable[Batch]) -> Iterator[list[torch.Tensor]]:
        """Each window's fields, already on the device. A copy from pageable host memory waits
        for the GPU to finish the work queued before it, so copying window by window would
        stop the host from preparing the next windows while the GPU trains; instead windows go
        up WINDOWS_PER_UPLOAD at a time, stacked in pinned memory, without blocking."""
        device = self.mask.device
        batches = iter(batches)
        while group := list(itertools.islice(batches, WINDOWS_PER_UPLOAD)):
            stacked = [torch.from_numpy(np.stack([getattr(b, f) for b in group])) for f in _FIELDS]
            if device.type == "cuda":
                stacked = [t.pin_memory().to(device, non_blocking=True) for t in stacked]
            for index in range(len(group)):
                yield [t[index] for t in stacked]

    # -- the two step bodies: no arguments, no host synchronisation -----------------------------

    def _forward(self, dropout, loss_only: bool = False):
        logits, new_state = self.model(self.inputs, self._carried_state(), dropout,
                                       add_output_bias=not self.loss_kernels)
        return self._scored(logits, new_state, loss_only)

    def _carried_state(self) -> list:
        """The state carried from the last window, zero in the rows that start anew."""
        keep = (~self.reset).to(self.mask.dtype).view(1, -1, 1)
        return [tuple(s * keep for s in layer) for layer in self.state]

    def _scored(self, logits, new_state, loss_only: bool = False):
        """Keeps the window's final state for the next window; (the window's metric sums per
        member, each member's summed loss), as `_stats`."""
        with torch.no_grad():
            for old, new in zip(self.state, new_state):
                for buffer, value in zip(old, new):
                    buffer.copy_(value)  # carried into the next window (truncated BPTT)
        return self._stats(logits, loss_only)

    def _stats(self, logits, loss_only: bool = False):
        """(The window's metric sums per member, each member's summed loss); with `loss_only`
        (training reports no metric), the loss's sum alone."""
        if self.task.output_kind == "softmax":
            bias = self.model.output_bias if self.loss_kernels else None
            stats = task_metrics.softmax_stats(logits, self.targets, self.mask, bias,
                                               self.loss_kernels, loss_only)
            return stats, stats["loss_sum"]
        stats = task_metrics.sigmoid_stats(logits, self.targets, self.mask, loss_only)
        return stats, stats["nll_sum"]

    def _train(self) -> None:
        self.model.train()
        _, loss_sums = self._forward(self.dropout, loss_only=True)
        self._clipped_sgd_step(_gradients(self._objective(loss_sums), self.parameters))

    def _objective(self, loss_sums: torch.Tensor) -> torch.Tensor:
        """What a training step differentiates. Each member's loss depends on its own parameters
        only, so one backward of the sum gives every member its own gradient; divided by the
        minibatch size as §3.7 says, or by the window's scored targets (a tensor: no host
        synchronisation in a captured step). Notes which members' losses stayed finite and
        advances dropout's masks."""
        if self.dropout is not None:
            self.dropout.window.add_(1)  # fresh masks for the next window
        self.finite &= torch.isfinite(loss_sums.detach())
        divisor = self.mask.sum().clamp(min=1.0) if self.per_target else self.mask.shape[1]
        return loss_sums.sum() / divisor

    @torch.no_grad()
    def _clipped_sgd_step(self, grads: list[torch.Tensor | None]) -> None:
        """p[k] -= rate[k] * g[k] * min(1, max_norm[k] / |g[k]|), |g[k]| over all of member k's
        parameters. Non-finite gradients (a diverged member) become 0, so frozen members stay
        put and nothing non-finite reaches the norms of the others. A parameter no output
        depends on (a state that never reaches h) gets no gradient (None)."""
        if self.sgd_kernels:  # the same update in Triton kernels, without the copies
            from cellsearch.engine.kernels.sgd import clipped_sgd_  # (imports Triton)

            clipped_sgd_(self.flat_parameters, self.sizes, grads, self.learning_rates,
                         self.max_norms)
            return
        # All of a member's gradients in one row, in the order of `flat_parameters`' columns: a
        # few kernels for the whole update instead of a few per parameter.
        rows = torch.cat([(g if g is not None else p.new_zeros(p.shape)).flatten(1)
                          for g, p in zip(grads, self.parameters)], dim=1)
        torch.nan_to_num_(rows, nan=0.0, posinf=0.0, neginf=0.0)
        norms = torch.linalg.vector_norm(rows, dim=1)  # (K,)
        scale = self.learning_rates * torch.clamp(self.max_norms / (norms + 1e-6), max=1.0)
        self.flat_parameters.addcmul_(rows, scale.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def _evaluate(self) -> None:
        self.model.eval()
        self._add_to_totals(self._forward(None)[0])

    def _add_to_totals(self, stats: dict[str, torch.Tensor]) -> None:
        if self.totals is None:  # the first call is eager (see Captured), never captured
            self.totals = {name: torch.zeros_like(value) for name, value in stats.items()}
        for name, value in stats.items():
            self.totals[name].add_(value)

    def _step(self, phase: str, first: bool = False) -> Iterator[None]:
        """The loaded window's step — "train", or the evaluation split's — then one yield: the
        population's own step, or a shared one, which runs when the mixer is next flushed
        (`first`: the epoch's first training window)."""
        if self.mixer is not None:
            yield from self.mixer.step(self, phase, first)
        else:
            (self.train_step if phase == "train" else self.eval_step)()
            yield

    # -- passes ---------------------------------------------------------------------------------

    def train_windows(
        self, epoch: int, learning_rates: list[float], on_window=None
    ) -> Iterator[None]:
        """One pass over the training windows, a window at a time: yields once each window is
        queued, so that a caller can interleave several populations' windows; `finite` then says
        per member whether its loss stayed finite."""
        self.learning_rates.copy_(torch.tensor(learning_rates))
        self.finite.fill_(True)
        batches = self.task.batches("train", self.mask.shape[1], self.mask.shape[0], epoch=epoch)
        for window, batch in enumerate(self.uploaded(batches)):
            self.load(batch)
            yield from self._step("train", first=window == 0)
            if on_window is not None:
                on_window(window + 1)

    def evaluate(self, split: str) -> dict[str, list[float]]:
        """Metrics of every member over `split` (see `tasks.metrics.summarize`)."""
        return drive(self.evaluation_windows(split))

    def evaluation_windows(self, split: str) -> Generator[None, None, dict[str, list[float]]]:
        """`evaluate` a window at a time: yields once each window is queued and then until the
        pass has run (`settled`), so a caller advancing several populations keeps the others
        fed meanwhile; returns the metrics."""
        for total in (self.totals or {}).values():
            total.zero_()
        batches = self.task.batches(split, self.mask.shape[1], self.mask.shape[0])
        for batch in self.uploaded(batches):
            self.load(batch)
            yield from self._step(split)
        yield from self.settled()
        summary = task_metrics.summarize(self.totals)
        return {name: [float(v) for v in values.tolist()] for name, values in summary.items()}

    def settled(self) -> Iterator[None]:
        """Yields until the work queued so far on the current CUDA stream has run (at once on a
        CPU), so that reading a result afterwards does not hold the thread: one thread advancing
        many populations would otherwise stop feeding all of them while one drains its queue."""
        if self.mask.device.type != "cuda":
            return
        done = torch.cuda.Event()
        done.record()
        while not done.query():
            yield


class MixedSteps:
    """The training and evaluation steps of several populations, of different cells and hidden
    sizes, each as one step: their layers at each depth run together in the mixed engine
    (`engine.mixed`), and so do their static parts and output layers (`products_kernel`, see
    `mixed.form_products`); training, one backward serves all, and each population then takes
    its own clipped SGD step, all of them in one `kernels.sgd.GroupedSGD` with `grouped_sgd`
    (default: on CUDA, where its kernels work). On CUDA each step is captured into one CUDA
    graph, like a population's own. Each population loads its own window
    (`PopulationSteps.load`) beforehand; the windows share their shape. The numbers are those of
    each population's own steps, to float rounding."""

    def __init__(self, populations: list[PopulationSteps], capture: bool,
                 warmup: int = WARMUP_CALLS, grouped_sgd: bool | None = None,
                 products_kernel: str | None = None, grouped_loss: bool | None = None):
        shapes = {tuple(p.mask.shape) for p in populations}
        if len(shapes) != 1:
            raise ValueError(f"populations trained together share their window shape, got "
                             f"{sorted(shapes)}")
        if capture and warmup < 1:
            raise ValueError("a mixed step runs eagerly at least once before it is captured")
        self.populations = populations
        self.device = device = populations[0].mask.device
        if grouped_sgd is None:
            grouped_sgd = device.type == "cuda" and _grouped_usable(str(device))
        self.use_grouped_sgd = grouped_sgd
        if grouped_loss is None:  # (softmax losses in their kernels: CUDA)
            grouped_loss = (all(p.loss_kernels for p in populations)
                            and _grouped_loss_usable(str(device)))
        self.grouped_loss = grouped_loss
        self.loss_tables: tuple | None = None  # made by the first training step too
        self.products_kernel = products_kernel
        self.grouped_sgd = None  # made by the first training step, which runs eagerly
        self.divisors: _Divisors | None = None  # and so are these
        self.layouts: dict = {}  # the mixes' tables, alive as long as the captured steps
        self.tables: dict[bool, dict] = {True: {}, False: {}}  # the products', each step its own
        self.train_step = Captured(self._train, capture, warmup)
        self.eval_step = Captured(self._evaluate, capture, warmup)

    def _forward(self, training: bool):
        """Each population's logits; its final state is already in its state buffers (the mixed
        engine carries it there, and zeroes the reset rows on the way in)."""
        populations = self.populations
        # the output bias in the products, unless the loss kernels add it (not the grouped loss)
        bias = [(training and self.grouped_loss) or not p.loss_kernels for p in populations]
        results = forward_together(
            [p.model for p in populations], [p.inputs for p in populations],
            [p.state for p in populations],
            [p.dropout if training else None for p in populations], bias, self.layouts,
            resets=[p.reset for p in populations], products_kernel=self.products_kernel,
            tables=self.tables[training])
        return [logits for logits, _ in results]

    def _train(self) -> None:
        populations = self.populations
        for p in populations:
            p.model.train()
        logits = self._forward(training=True)
        if self.grouped_loss:  # (Triton's kernels)
            from cellsearch.engine.kernels.cross_entropy import grouped_loss_sums
            from cellsearch.engine.kernels.tables import Table

            self.loss_tables = self.loss_tables or (Table(), Table())
            losses = grouped_loss_sums(logits, [p.targets for p in populations],
                                       [p.mask for p in populations], self.loss_tables)
        else:
            losses = torch.cat([p._stats(x, loss_only=True)[1]
                                for p, x in zip(populations, logits)])
        grads = _gradients(self._objective(losses),
                           [q for p in populations for q in p.parameters])
        if self.use_grouped_sgd:
            if self.grouped_sgd is None:
                from cellsearch.engine.kernels.sgd import GroupedSGD  # (imports Triton)

                self.grouped_sgd = GroupedSGD([(p.parameters, p.learning_rates, p.max_norms)
                                               for p in populations])
            self.grouped_sgd(grads)
            return
        rest = iter(grads)
        for p in populations:
            p._clipped_sgd_step(list(itertools.islice(rest, len(p.parameters))))

    def _objective(self, losses: torch.Tensor) -> torch.Tensor:
        """The sum of every population's `PopulationSteps._objective`, from the members' summed
        losses (M,), in a few launches for all of them instead of a few each: each member's loss
        divided by its population's divisor."""
        populations = self.populations
        if self.divisors is None:  # (made by the first call, which runs eagerly)
            self.divisors = _Divisors(populations)
        finite = torch.isfinite(losses.detach())
        for p, flags in zip(populations, finite.split([p.model.population_size
                                                        for p in populations])):
            p.finite &= flags
            if p.dropout is not None:
                p.dropout.window.add_(1)  # fresh masks for the next window
        return (losses / self.divisors()).sum()

    @torch.no_grad()
    def _evaluate(self) -> None:
        for p in self.populations:
            p.model.eval()
        for p, logits in zip(self.populations, self._forward(training=False)):
            p._add_to_totals(p._stats(logits)[0])


class _Divisors:
    """What each member's loss is divided by in its population's objective, (M,): the number
    of targets its window scores, or the minibatch size (`PopulationSteps._objective`)."""

    def __init__(self, populations: list[PopulationSteps]):
        device = populations[0].mask.device
        self.masks = [p.mask for p in populations]
        self.per_target = torch.tensor([p.per_target for p in populations], device=device)
        self.batch = torch.tensor([float(p.mask.shape[1]) for p in populations], device=device)
        sizes = torch.tensor([p.model.population_size for p in populations])
        self.member = torch.repeat_interleave(torch.arange(len(populations)), sizes).to(device)

    def __call__(self) -> torch.Tensor:
        targets = torch.stack(self.masks).sum(dim=(1, 2)).clamp(min=1.0)
        return torch.where(self.per_target, targets, self.batch).index_select(0, self.member)


class Mixer:
    """The windows that populations of different cells ask for, trained together.

    A population with a mixer (`PopulationSteps(mixer=...)`) loads its window and asks for its
    step (`step`, a generator that yields until the step has run); whoever advances the
    populations (`executors.interleaved` with `mixed`) calls `flush` after giving each its turn.
    A flush runs one `MixedSteps` step per cohort and phase asked for.

    Cohorts keep a shared step the same from window to window, so that it is captured once and
    replayed (on CUDA, after `warmup` eager calls), instead of changing whenever some population
    ends an epoch: populations of one task that start an epoch at the same flush form a cohort,
    and train it in lockstep. At its next epoch a population waits (a few evaluation windows,
    when its mates run a test pass it does not) until every mate still training is back, and the
    cohort forms again, with any other population of its task starting an epoch then; it is
    the same step as before, still captured, unless someone left. Each population leaves when its
    training ends (`leave`), at once, taking its shared steps (and their CUDA graphs) with it. A
    new population whose task has cohorts training waits for one of them to form again, to join
    it: at most an epoch, as every cohort forms again each epoch (or ends). A cohort's step
    launches as many kernels whatever its size, so fewer, larger cohorts train more per launch,
    at the cost of the newcomer's wait (its one epoch among the tens it trains, while the GPU
    trains the others). `join_within` N bounds the wait to N flushes instead, after which it
    starts a cohort of its own. Either way it never disturbs the others' steps.

    The shared steps kept are those of the live cohorts, `kept` a cohort (train, valid, test);
    each captured one holds its own activation memory. All work goes to the current CUDA
    stream, which the populations' loads must share. A shared step that fails fails every
    population in it, with the error. Waiting changes when a population trains, never what.
    """

    def __init__(self, capture: bool, warmup: int = 4, kept: int = 3,
                 join_within: int | None = None):
        self.capture, self.warmup, self.kept = capture, warmup, kept
        self.join_within = join_within
        self.waiting: list[tuple[PopulationSteps, str, bool]] = []  # (population, phase, first)
        self.asking: set[int] = set()  # the ids of the waiting: asked once a flush by each
        self.loads: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # (see `loading`)
        self.cohorts: dict[int, tuple[PopulationSteps, ...]] = {}  # id(population) -> cohort
        self.memberships: dict[tuple[str, tuple[int, ...]], MixedSteps] = {}
        self.failures: dict[int, Exception] = {}  # id(population) -> why its step failed
        # id(population) -> (the flush it first asked at, a count): its order, and its wait
        self.arrivals: dict[int, tuple[int, int]] = {}
        self._arrival = itertools.count()
        self.retired: list[tuple[torch.cuda.Event, MixedSteps]] = []  # (see `_retire`)
        self.flushes = 0
        self.made = self.runs = self.warm_runs = self.members = 0  # for `summary`

    def step(self, population: PopulationSteps, phase: str, first: bool = False
             ) -> Iterator[None]:
        """Ask for `population`'s step on its loaded window, "train" (`first`: the epoch's first
        window) or an evaluation split; yields until a flush has run it, and raises what made
        that step fail."""
        if id(population) not in self.arrivals:
            self.arrivals[id(population)] = (self.flushes, next(self._arrival))
        self.waiting.append((population, phase, first))
        self.asking.add(id(population))
        try:
            while id(population) in self.asking:
                yield
        except GeneratorExit:  # its run was stopped: nothing to do for it
            self.waiting = [entry for entry in self.waiting if entry[0] is not population]
            self.asking.discard(id(population))
            self.loads.pop(id(population), None)
            raise
        error = self.failures.pop(id(population), None)
        if error is not None:
            raise error

    def flush(self) -> None:
        """Run the steps asked for since the last flush, but for those of populations that
        wait for their cohort."""
        self.flushes += 1
        self.retired = [(done, kept) for done, kept in self.retired if not done.query()]
        starting = [p for p, phase, first in self.waiting if phase == "train" and first]
        back = {id(p) for p in starting}
        ready = [p for p in starting if all(id(q) in back for q in self.cohort(p))]
        # A new population waits for a cohort of its task to form again, to join it.
        forming = {p.task.name for p in ready if id(p) in self.cohorts}
        training = {cohort[0].task.name for cohort in self.cohorts.values()}  # (one task each)
        ready = [p for p in ready if id(p) in self.cohorts or p.task.name in forming
                 or p.task.name not in training
                 or (self.join_within is not None
                     and self.flushes - self.arrivals[id(p)][0] > self.join_within)]
        self._form_cohorts(ready)
        ready_ids = {id(p) for p in ready}
        groups: dict[tuple[str, tuple[int, ...]], list[PopulationSteps]] = {}
        held = []
        keys: dict[int, tuple[int, ...]] = {}  # id(cohort) -> its members' ids, made once
        for entry in self.waiting:
            population, phase, first = entry
            if phase == "train" and first and id(population) not in ready_ids:
                held.append(entry)
                continue
            cohort = self.cohort(population)
            if id(cohort) not in keys:
                keys[id(cohort)] = tuple(id(q) for q in cohort)
            groups.setdefault((phase, keys[id(cohort)]), []).append(population)
        self.waiting = held
        self.asking = {id(entry[0]) for entry in held}
        running = [p for populations in groups.values() for p in populations]
        try:
            self._load(running)
        except Exception as error:  # noqa: BLE001 - each population's run records it
            self.failures.update((id(p), error) for p in running)
            return
        for (phase, _), populations in groups.items():
            populations.sort(key=lambda p: self.arrivals[id(p)])  # a step's members in one order
            try:
                together = self._membership(phase, populations)
                step = together.train_step if phase == "train" else together.eval_step
                self.runs += 1
                self.members += len(populations)
                step()
                # (on CUDA: replayed, or just captured; a capture out of memory runs eagerly)
                self.warm_runs += (step.graph is not None if self.capture
                                   else step.calls > self.warmup)
            except Exception as error:  # noqa: BLE001 - each population's run records it
                self.failures.update((id(p), error) for p in populations)

    def loading(self, population: PopulationSteps,
                copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep `population`'s window, (buffer, field) pairs, to copy when its step next runs:
        with every other population's then, a launch per kind of field (`kernels.copies`),
        where each population's four copies would each be one."""
        self.loads[id(population)] = copies

    def _load(self, populations: list[PopulationSteps]) -> None:
        by_kind: dict[torch.dtype, Copies] = {}
        for population in populations:
            for buffer, value in self.loads.pop(id(population), ()):
                if value.dtype == buffer.dtype and buffer.dtype in KINDS:
                    by_kind.setdefault(buffer.dtype, Copies()).add(buffer, value)
                else:  # (a task's own dtypes: converted as copied)
                    buffer.copy_(value, non_blocking=True)
        for copies in by_kind.values():
            copies.launch()

    def summary(self) -> str | None:
        """How the shared steps went (None before any): made, run, how many of their runs came
        after the warmup (on a GPU replayed from a CUDA graph: the more, the fewer eager
        launches), members."""
        if not self.runs:
            return None
        return (f"{self.made:,} shared steps made, run {self.runs:,} times, "
                f"{self.warm_runs / self.runs:.0%} past their warmup"
                f"{' (replayed from CUDA graphs)' if self.capture else ''}, "
                f"{self.members / self.runs:.1f} populations each")

    def cohort(self, population: PopulationSteps) -> tuple[PopulationSteps, ...]:
        """The populations `population` trains with (itself alone before its first epoch)."""
        return self.cohorts.get(id(population), (population,))

    def leave(self, population: PopulationSteps) -> None:
        """Forget `population` (its training ended): its cohort and shared steps."""
        mates = tuple(p for p in self.cohort(population) if p is not population)
        self.cohorts.pop(id(population), None)
        self.arrivals.pop(id(population), None)
        self.loads.pop(id(population), None)
        self.failures.pop(id(population), None)  # (its id may be another's later)
        for mate in mates:
            self.cohorts[id(mate)] = mates
        self._drop(lambda members: id(population) in members)

    def _form_cohorts(self, ready: list[PopulationSteps]) -> None:
        """The populations starting an epoch together, as one cohort per task."""
        by_task: dict[str, list[PopulationSteps]] = {}
        for population in sorted(ready, key=lambda p: self.arrivals[id(p)]):
            by_task.setdefault(population.task.name, []).append(population)
        for group in by_task.values():
            cohort = tuple(group)
            ids = {id(p) for p in cohort}
            if all(self.cohorts.get(id(p)) == cohort for p in cohort):
                continue  # the same cohort as before: its steps stay
            for population in cohort:
                self.cohorts[id(population)] = cohort
            # its members' steps with others are of no use now
            self._drop(lambda members, ids=ids: bool(ids & set(members))
                       and not set(members) <= ids)

    def _drop(self, stale) -> None:
        for key in [key for key in self.memberships if stale(key[1])]:
            self._retire(self.memberships.pop(key))

    def _retire(self, together: MixedSteps) -> None:
        """Forget a shared step, but keep it until the GPU has run the replays queued from it:
        they copy their launch tables from pinned host memory of its own, which torch's
        allocator would hand to the next table as soon as the copies it knows of are done
        (the eager calls', on the step's side stream; replays run on the current one), and
        whose new values would then reach a queued replay."""
        if together.train_step.graph is None and together.eval_step.graph is None:
            return
        self.retired.append((_queued_so_far(together.device), together))

    def _membership(self, phase: str, populations: list[PopulationSteps]) -> MixedSteps:
        key = (phase, tuple(id(p) for p in populations))  # unique while kept: kept holds them
        together = self.memberships.pop(key, None)
        if together is None:
            together = MixedSteps(populations, self.capture, self.warmup)
            self.made += 1
        self.memberships[key] = together  # the most recent last
        # the cohorts training: each a tuple that all its members share, or this one alone
        live = (len({id(c) for c in self.cohorts.values()})
                + (id(populations[0]) not in self.cohorts))
        while len(self.memberships) > self.kept * live:
            self._retire(self.memberships.pop(next(iter(self.memberships))))
        return together


def _queued_so_far(device: torch.device) -> torch.cuda.Event:
    """An event that completes once `device`'s current stream has run what is queued on it."""
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    return done


def drive(run: Generator[None, None, Any]) -> Any:
    """Run a generator such as `trainer.population_run` to its end; its return value."""
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value
