"""`InterleavedExecutor` (`--executor interleaved`, and `--executor mixed`): every submitted job
trains in this process at once, its populations advanced a training window at a time in turn,
each on its own CUDA stream — or, mixed, in shared steps (`train.steps.Mixer`): each round, the
windows of the populations of a task that started their epoch together run as one step of the
mixed engine (`engine.mixed`), different cells and hidden sizes in the same launches, the same
step from window to window and epoch to epoch (captured once on a GPU).

One thread, so no CUDA-graph capture races with another (threads with a stream per cell broke
at 16 cells); one small population leaves most of a GPU idle, and the windows of many, queued on
different streams, may run at the same time. Jobs join as they are submitted and leave as they
finish: `as_completed` hands back each job the moment its last population ends, while the others
go on, so one slow setting never holds the rest back, and the search submits its next stage at
once. `max_jobs` bounds how many train at once, and on a GPU a job starts only while a quarter
of its memory is free; the rest wait their turn.

Jobs of the default trainer run this way (`train.evaluate.evaluation`); a job naming another
evaluator runs whole when it starts. Results are the ones `run_job` gives: the same numbers, as
every population is independent of the others. A killed search loses the jobs in training.

Measured on a CPU only (where interleaving changes nothing but the order of the work, and the
mixed engine's instructions run as torch operations, slower than each cell's own step); neither
way's GPU speed is measured yet.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future
from typing import Any, Generator, Iterator, Sequence

from cellsearch.evaluation.job import (
    DEFAULT_EVALUATOR,
    EvaluationJob,
    describe,
    failed_results,
)
from cellsearch.executors.base import Executor, checked_or_failed, run_job

# A new job starts only while this fraction of the GPU's memory is free (or nothing trains).
FREE_MEMORY_TO_ADMIT = 0.25
# Hardware work queues between the host and the GPU. CUDA's default, 8, makes the streams of more
# than 8 populations share queues, where one stream's kernel can hold up another's (false
# dependencies); 32 is the most CUDA takes. Set for this process unless the user set it, before
# its CUDA context exists (which reads it). Not yet measured on a GPU: the GPU campaign's
# bench-mixed runs with 8 and with 32.
CUDA_CONNECTIONS = "32"


def on_gpu(device: str) -> bool:
    """Whether `device` ("auto", "cpu", "cuda[:i]") trains on a GPU in this process."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


class _JobFuture(Future):
    def __init__(self, job: EvaluationJob):
        super().__init__()
        self.job = job


class InterleavedExecutor(Executor):
    """Trains up to `max_jobs` submitted jobs at once in this process (see the module docstring)."""

    def __init__(self, device: str = "cpu", data_dir: str | None = None, max_jobs: int = 64,
                 mixed: bool = False):
        self.device, self.data_dir, self.max_jobs = device, data_dir, max_jobs
        if device.startswith(("cuda", "auto")):
            os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", CUDA_CONNECTIONS)
        self._waiting: deque[_JobFuture] = deque()
        self._training: dict[_JobFuture, Generator[None, None, list]] = {}
        self._mixer = self._new_mixer() if mixed else None

    def _new_mixer(self):
        """A mixer for this executor's device; none (each population its own steps, as
        `interleaved`) on a GPU where the mixed engine's kernels do not work."""
        from cellsearch.engine import mixed
        from cellsearch.train.steps import Mixer

        cuda = on_gpu(self.device)
        if cuda and not mixed.usable("cuda" if self.device == "auto" else self.device):
            return None  # (`usable` has said why)
        return Mixer(capture=cuda)

    def summary(self) -> str | None:
        """Mixed, how its shared steps went (`Mixer.summary`) and, on a GPU, the most memory
        its allocator held (captured shared steps keep theirs); None before any."""
        mixing = self._mixer.summary() if self._mixer is not None else None
        if mixing is None:
            return None
        if self._mixer.capture:
            import torch

            held, total = torch.cuda.max_memory_reserved(), torch.cuda.mem_get_info()[1]
            mixing += f"; GPU memory held at most {held / 2**30:.1f} of {total / 2**30:.1f} GiB"
        return f"mixed engine: {mixing}"

    def submit(self, job: EvaluationJob) -> Future:
        future = _JobFuture(job)
        self._waiting.append(future)
        return future

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        wanted = list(futures)
        while wanted:
            for future in [future for future in wanted if future.done()]:
                wanted.remove(future)
                yield future
            if wanted:
                self.advance()

    def advance(self) -> None:
        """One round: start the waiting jobs there is room for, then one window of every job in
        training; jobs that end have their futures settled. (`as_completed` runs rounds until
        what it waits for is done; `executors.resident` runs them from a thread of its own.)"""
        self._admit()
        self._advance()

    @property
    def training(self) -> int:
        """How many jobs train now."""
        return len(self._training)

    def cancel(self, future: Future) -> None:
        """Stop `future`'s job now, waiting or training; it comes back as cancelled."""
        if future in self._training:
            self._training.pop(future).close()  # (its populations leave the mixer)
        elif future in self._waiting:
            self._waiting.remove(future)
        if not future.done():
            future.set_result(failed_results(future.job, "cancelled", self.device))

    def shutdown(self, cancel: bool = False) -> None:
        """Stop what trains (nothing runs in the background, so only a cancelled search leaves
        anything here)."""
        for future, run in list(self._training.items()):
            run.close()
            if not future.done():
                future.set_result(failed_results(future.job, "cancelled", self.device))
        self._training.clear()
        for future in self._waiting:
            if not future.done():
                future.set_result(failed_results(future.job, "cancelled", self.device))
        self._waiting.clear()

    # -- internals -------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Start waiting jobs while there is room: fewer than `max_jobs` training and, on a GPU,
        a quarter of its memory free. A started job trains its first window at once, so that the
        next one sizes its populations by the memory left."""
        while self._waiting and len(self._training) < self.max_jobs and self._room():
            future = self._waiting.popleft()
            if future.job.evaluator != DEFAULT_EVALUATOR:
                future.set_result(run_job(future.job, self.device, self.data_dir))
                continue
            self._training[future] = self._run(future.job)
            self._step(future)

    def _room(self) -> bool:
        if not self._training or not self.device.startswith(("cuda", "auto")):
            return True
        import torch

        if not torch.cuda.is_available():
            return True
        free, total = torch.cuda.mem_get_info()
        return free > FREE_MEMORY_TO_ADMIT * total

    def _advance(self) -> None:
        """One window of every job in training; settle those that end. Mixed, the windows asked
        for then train together."""
        for future in list(self._training):
            self._step(future)
        if self._mixer is not None:
            self._mixer.flush()

    def _step(self, future: _JobFuture) -> None:
        try:
            next(self._training[future])
        except StopIteration as stop:
            del self._training[future]
            future.set_result(checked_or_failed(future.job, stop.value, self.device))
        except Exception as error:  # noqa: BLE001 - a broken job is recorded, not raised
            del self._training[future]
            future.set_result(failed_results(future.job, describe(error), self.device))

    def _run(self, job: EvaluationJob) -> Generator[None, None, Any]:
        from cellsearch.cells.graph import CellGraph
        from cellsearch.train.evaluate import evaluation

        graph = CellGraph.from_json(job.graph_json)
        return (yield from evaluation(
            graph, job.task, list(job.settings), device=self.device, data_dir=self.data_dir,
            mixer=self._mixer, **job.options,
        ))
