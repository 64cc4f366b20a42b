"""`DaskExecutor`: jobs run on a Dask cluster (`--executor dask --scheduler tcp://HOST:PORT`) or on
a `LocalCluster` it starts itself (`--executor dask-local --workers N`).

The unit of work is one `EvaluationJob` (an architecture, a task, a shape, K settings trained as a
population); a worker runs `run_job` and sends back plain dicts, never touching the storage: the
driver alone writes the database, as with every executor. With `jobs_per_worker` N (N > 1) a
worker trains up to N jobs at once, together, in its resident engine (`executors.resident`:
on a GPU the mixed engine, different cells in the same launches); Dask's N threads of a worker
each hand it one job and wait.

Failures, as Dask handles them and as the search sees them:

- A worker that dies mid-job (killed, preempted, out of memory) has its job rescheduled on another
  worker by the scheduler; the driver's future completes once, with the result of the run that
  finished, so nothing is recorded twice.
- A job whose workers keep dying (more than `distributed.scheduler.allowed-failures` times, 3 by
  default; `allowed_failures` for a cluster started here) comes back as one failed Result per
  setting with the reason, recorded like a diverged run; the search goes on. Dask's `retries`
  re-run a job that raised, which `run_job` only does when the job cannot even be unpickled.
- With no worker at all, jobs wait for one: workers may come and go (a SLURM allocation ends,
  dask-jobqueue scales) without the search noticing.
- Losing the scheduler is not a result: the driver stops with `SchedulerLostError` (a UserError,
  one line in the CLI). Everything completed is stored, so running the same command again
  reattaches to the cluster and resumes from the database.

The local cluster started here (what `LocalCluster` starts, but built as a `SpecCluster`, because
LocalCluster gives every worker the same environment) has one worker process per visible GPU,
with one thread (`jobs_per_worker` threads when set), each pinned to its GPU through
`CUDA_VISIBLE_DEVICES`, so that `--device auto` or `cuda` on a worker means "my GPU";
`workers=N` starts N workers instead, pinned round-robin.
Without GPUs (or with `device="cpu"`) it starts `workers` CPU workers. Dask sets
OMP_NUM_THREADS=1 in its workers, so N CPU workers use about N cores.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from concurrent import futures as concurrent_futures
from concurrent.futures import Future
from typing import Any, Iterator, Sequence

from cellsearch.errors import UserError
from cellsearch.evaluation.job import EvaluationJob, describe, failed_results
from cellsearch.executors.base import Executor, checked_or_failed, run_job_as_dicts
from cellsearch.executors.resident import cancel as cancel_together
from cellsearch.executors.resident import run_job_together, summaries

try:
    import distributed
    from distributed.deploy.spec import SpecCluster
    from distributed.scheduler import KilledWorker
    from distributed.worker_memory import parse_memory_limit
except ImportError:  # pragma: no cover - depends on the environment
    raise UserError("the Dask executors need Dask: pip install 'cellsearch[dask]'") from None

logger = logging.getLogger(__name__)


class SchedulerLostError(UserError):
    """The driver lost its connection to the Dask scheduler; the search stops and can resume."""


def _worker_version() -> str:
    """Runs on each worker: the cellsearch it imports."""
    import cellsearch

    return cellsearch.__version__


class _Session:
    """One connection to a scheduler: the client, the cluster when started here, and the Dask
    future behind each unfinished job (Dask forgets a task whose last future is dropped)."""

    def __init__(self, client: distributed.Client, cluster: SpecCluster | None):
        self.client, self.cluster = client, cluster
        self.running: dict[Future, tuple[EvaluationJob, distributed.Future]] = {}
        self.lock = threading.Lock()
        self.closing = False


class DaskExecutor(Executor):
    """Runs jobs on the Dask scheduler at `scheduler_address`, or, when it is None, on a
    `LocalCluster` of `workers` worker processes (default: one per visible GPU, else one).

    `device` and `data_dir` are resolved on the worker: `auto` picks the worker's GPU when it has
    one, and `data_dir` (or, when None, the worker's $CELLSEARCH_DATA) is a path on the worker's
    machine. `retries` is Dask's count of re-runs for a job that raised; `allowed_failures`
    (a cluster started here only) how many workers may die running one job before it is recorded
    as failed; None keeps Dask's configuration (`distributed.scheduler.allowed-failures`).
    `jobs_per_worker` (N > 1): each worker trains its jobs together in its resident engine, up
    to N at once: the threads of a worker started here, a worker's `--nthreads` elsewhere;
    `mixed` says whether in shared steps of the mixed engine (None: where the worker's device is
    a GPU).

    Nothing starts until `start` or the first `submit`; `shutdown` closes the client and any
    cluster started here, and a later `start` or `submit` connects again.
    """

    def __init__(
        self,
        scheduler_address: str | None = None,
        *,
        workers: int | None = None,
        device: str = "auto",
        data_dir: str | None = None,
        retries: int = 2,
        allowed_failures: int | None = None,
        silence_logs: int = logging.WARNING,
        jobs_per_worker: int | None = None,
        mixed: bool | None = None,
    ):
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if jobs_per_worker is not None and jobs_per_worker < 1:
            raise UserError(f"--jobs-per-worker must be at least 1, got {jobs_per_worker}")
        if scheduler_address is not None and workers is not None:
            raise UserError("--workers starts a local cluster; with --scheduler, start workers on the cluster instead")
        self.jobs_per_worker, self.mixed = jobs_per_worker or 1, mixed
        self.scheduler_address, self.workers = scheduler_address, workers
        self.device, self.data_dir = device, data_dir
        self.retries, self.allowed_failures, self.silence_logs = retries, allowed_failures, silence_logs
        self._session: _Session | None = None

    @property
    def client(self) -> distributed.Client:
        """The Dask client (connecting, or starting the local cluster, on first use), e.g. for
        `client.run` on the workers."""
        return self._live_session().client

    # -- the Executor interface -----------------------------------------------------------------

    def start(self) -> None:
        """Connect to the scheduler (or start the local cluster) and check its workers' cellsearch;
        UserError when the scheduler cannot be reached or the workers differ."""
        self._live_session()

    def submit(self, job: EvaluationJob) -> Future:
        session = self._live_session()
        outer: Future = Future()
        outer.set_running_or_notify_cancel()
        key = f"evaluate-{job.task}-{job.architecture_hash[:12]}-{uuid.uuid4().hex[:8]}"
        run, arguments = run_job_as_dicts, (job, self.device, self.data_dir)
        if self.jobs_per_worker > 1:
            run, arguments = run_job_together, (*arguments, self.mixed, key)
        inner = session.client.submit(run, *arguments, key=key, pure=False, retries=self.retries)
        with session.lock:
            session.running[outer] = (job, inner)
        inner.add_done_callback(lambda done: self._finish(session, job, outer, done))
        return outer

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        return concurrent_futures.as_completed(futures)

    def summary(self) -> str | None:
        """With `jobs_per_worker`, how each worker's resident engine went (None before any job,
        or when the workers cannot be asked)."""
        if self.jobs_per_worker == 1 or self._session is None:
            return None
        try:
            answers = self._session.client.run(summaries, on_error="return")
        except Exception:  # noqa: BLE001 - a lost scheduler has been reported already
            return None
        lines = [f"  {address}: {'; '.join(answer)}" for address, answer in sorted(answers.items())
                 if isinstance(answer, list) and answer]
        return "\n".join(["jobs trained together on each worker:", *lines]) if lines else None

    def shutdown(self, cancel: bool = False) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if not cancel:
            concurrent_futures.wait(list(session.running))
        with session.lock:
            session.closing = True
            running = dict(session.running)
        if running:
            # Dask cannot interrupt a task that runs (in a worker thread), but cancelling frees
            # the worker for the next driver as soon as it returns; a job in a worker's resident
            # engine returns at once when told to stop.
            keys = [inner.key for _, inner in running.values()]
            try:
                if self.jobs_per_worker > 1:
                    session.client.run(cancel_together, keys, on_error="ignore")
                session.client.cancel([inner for _, inner in running.values()], force=True)
            except Exception as error:  # noqa: BLE001 - a lost scheduler forgets them anyway
                logger.debug("could not cancel %d Dask jobs: %s", len(running), error)
        _close_quietly(session.client)
        if session.cluster is not None:
            session.cluster.close()
        for outer, (job, _) in running.items():
            self._settle(session, outer, lambda job=job: failed_results(job, "cancelled", self.device))

    # -- internals -------------------------------------------------------------------------------

    def _finish(self, session: _Session, job: EvaluationJob, outer: Future, inner: distributed.Future) -> None:
        """Runs in Dask's callback thread once `inner` is finished, erred or cancelled."""
        try:
            results = self._results(session, job, inner)
        except Exception as error:  # noqa: BLE001 - the driver, not this thread, must see it
            if session.closing:
                self._settle(session, outer, lambda: failed_results(job, "cancelled", self.device))
            else:
                lost = error if isinstance(error, SchedulerLostError) else self._lost(describe(error))
                self._settle(session, outer, lost)
        else:
            self._settle(session, outer, lambda: results)

    def _settle(self, session: _Session, outer: Future, outcome: Any) -> None:
        """Complete `outer` once: with an exception, or with what `outcome()` returns."""
        with session.lock:
            session.running.pop(outer, None)
            if outer.done():
                return
            if isinstance(outcome, BaseException):
                outer.set_exception(outcome)
            else:
                outer.set_result(outcome())

    def _results(self, session: _Session, job: EvaluationJob, inner: distributed.Future) -> list:
        """The job's Results; raises when they could not be fetched (the scheduler is gone)."""
        if inner.status == "finished":
            return checked_or_failed(job, inner.result(), self.device)
        if inner.status == "error":
            error = inner.exception()
            reason = _killed_reason(error) if isinstance(error, KilledWorker) else describe(error)
            return failed_results(job, reason, self.device)
        if session.closing:
            return failed_results(job, "cancelled", self.device)
        raise self._lost(f"job {inner.key} was {inner.status}")

    def _lost(self, detail: str) -> SchedulerLostError:
        where = f"at {self.scheduler_address}" if self.scheduler_address else "of the local cluster"
        return SchedulerLostError(
            f"lost the connection to the Dask scheduler {where} ({detail}); every completed evaluation"
            " is stored: run the search again to reattach to a scheduler and resume"
        )

    def _live_session(self) -> _Session:
        if self._session is None:
            if self.scheduler_address is None:
                cluster = self._start_local_cluster()
                client = distributed.Client(cluster, set_as_default=False)
            else:
                cluster, client = None, self._connect(self.scheduler_address)
            try:
                _check_workers(client)
            except BaseException:
                client.close()
                if cluster is not None:
                    cluster.close()
                raise
            self._session = _Session(client, cluster)
        return self._session

    def _connect(self, address: str) -> distributed.Client:
        try:
            return distributed.Client(address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise UserError(
                f"cannot reach the Dask scheduler at {address} ({error}); start one with"
                " `dask scheduler` and give its address, e.g. --scheduler tcp://HOST:8786 (see docs/cluster.md)"
            ) from None

    def _start_local_cluster(self) -> SpecCluster:
        gpus = [] if self.device == "cpu" else visible_gpus()
        if self.device.startswith("cuda") and not gpus:
            raise UserError(f"--device {self.device} was asked for, but this machine has no CUDA GPU for local workers")
        if self.device.startswith("cuda:"):
            raise UserError(
                f"--executor dask-local pins one GPU to each worker; use --device cuda or auto, not {self.device}"
            )
        count = self.workers or max(1, len(gpus))
        # As LocalCluster does: the machine's memory shared evenly between the workers (Dask
        # restarts a worker that passes 95% of its share).
        memory_limit = parse_memory_limit("auto", 1, count, logger=logger)
        workers = {}
        for index in range(count):
            env = {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if gpus else {}
            options = {
                "nthreads": self.jobs_per_worker,
                "host": "127.0.0.1",
                "memory_limit": memory_limit,
                "dashboard": False,
                "env": env,
                "silence_logs": self.silence_logs,
                "preload": [__name__],  # `dask_setup` below
            }
            workers[f"cellsearch-{index}"] = {"cls": distributed.Nanny, "options": options}
        # Without a dashboard the scheduler still serves /health and metrics over HTTP: on any free port.
        scheduler_options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": ":0"}
        if self.allowed_failures is not None:
            scheduler_options["allowed_failures"] = self.allowed_failures
        return SpecCluster(
            workers=workers,
            scheduler={"cls": distributed.Scheduler, "options": scheduler_options},
            silence_logs=self.silence_logs,
            name="cellsearch",
        )


def dask_setup(worker: distributed.Worker) -> None:
    """Runs in each worker of a cluster started here, as it starts: Ctrl-C in the terminal
    reaches every process of its group, and the driver alone should answer it (by closing the
    cluster), not each worker with a traceback of its own; nor should each job the driver
    cancels then be logged as a warning."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def _close_quietly(client: distributed.Client) -> None:
    """Close `client`; when it is still trying to reconnect to a lost scheduler, without the
    tracebacks Dask logs for the attempt it abandons (the driver has already said what happened)."""
    if client.status == "running":
        client.close()
        return
    client_logger = logging.getLogger("distributed.client")
    level = client_logger.level
    client_logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        client_logger.setLevel(level)


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as values for a worker's CUDA_VISIBLE_DEVICES (the
    entries of ours when set, so that a cluster started inside a SLURM GPU allocation stays in it)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [item.strip() for item in listed.split(",") if item.strip()][:count]


def _killed_reason(error: KilledWorker) -> str:
    last = getattr(getattr(error, "last_worker", None), "address", "unknown")
    deaths = getattr(error, "allowed_failures", 0) + 1
    return f"worker died: this job was running on {deaths} Dask worker(s) that died, the last {last}; see the worker logs"


def _check_workers(client: distributed.Client) -> None:
    """UserError unless every worker connected now imports the driver's version of cellsearch.

    Workers joining later are not checked; docs/cluster.md says how to start them."""
    import cellsearch

    answers = client.run(_worker_version, on_error="return")
    wrong = {
        address: answer
        for address, answer in answers.items()
        if isinstance(answer, BaseException) or answer != cellsearch.__version__
    }
    if wrong:
        details = "; ".join(f"{address}: {_describe(answer)}" for address, answer in sorted(wrong.items()))
        raise UserError(f"Dask workers must run cellsearch {cellsearch.__version__}, like the driver: {details}")


def _describe(answer: str | BaseException) -> str:
    if isinstance(answer, BaseException):
        return f"cannot import cellsearch ({describe(answer)})"
    return f"cellsearch {answer}"
