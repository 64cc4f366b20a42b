"""The architecture search of §3.1 and the hyperparameter selection of §3.3.

    config      `SearchConfig`: the procedure's numbers (paper defaults) and how they are loaded
    presets     named configurations shipped with the package (`tiny`)
    history     completed evaluations, indexed; the performance estimate (eq. 1)
    selection   which settings a candidate is evaluated on (§3.3)
    algorithm   the interface a search algorithm offers the driver; `config.algorithm` picks one
    procedure   `Search`: the paper's procedure, each step a deterministic plan of requests (§3.1)
    evolution   `RegularizedEvolution`: tournament parents, the oldest member out (Real et al.)
    driver      carries the requests out against a storage and an executor; start and resume
    summary     the top list and the §3.4 statistics of a stored run

The search never touches SQL or torch: it reads and writes through `cellsearch.storage.Storage`
and hands `EvaluationJob`s to a `cellsearch.executors.Executor`.
"""

from cellsearch.search.config import RESUMABLE_KEYS, SearchConfig, load_config
from cellsearch.search.driver import (
    Event,
    JobCompleted,
    RunPlan,
    SearchStarted,
    SearchSummary,
    StageStarted,
    StepCompleted,
    check_evaluator,
    check_mutator,
    open_run,
    plan_run,
    run_search,
    start_run,
)
from cellsearch.search.history import History
from cellsearch.search.procedure import Search
from cellsearch.search.summary import (
    RankedArchitecture,
    SearchStatistics,
    select_run,
    statistics,
    top_architectures,
)

__all__ = [
    "RESUMABLE_KEYS",
    "Event",
    "History",
    "JobCompleted",
    "RankedArchitecture",
    "RunPlan",
    "Search",
    "SearchConfig",
    "SearchStarted",
    "SearchStatistics",
    "SearchSummary",
    "StageStarted",
    "StepCompleted",
    "check_evaluator",
    "check_mutator",
    "load_config",
    "open_run",
    "plan_run",
    "run_search",
    "select_run",
    "start_run",
    "statistics",
    "top_architectures",
]
