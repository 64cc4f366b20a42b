"""The task catalog (`evaluation.tasks`) is the one list of tasks: the tasks package builds from
it, and what it says of each task is what the task itself says."""

import pytest

from cellsearch.evaluation import tasks as catalog
from cellsearch.evaluation.job import task_metric
from cellsearch.evaluation.settings import PARAMETER_BUDGETS, SearchSpace
from cellsearch.tasks import _TASKS, task_names
from cellsearch.tasks.files import MUSIC_FILES


def test_the_tasks_package_builds_exactly_the_catalogs_tasks_in_its_order():
    assert task_names() == catalog.NAMES == tuple(PARAMETER_BUDGETS)
    assert set(MUSIC_FILES) == {e.name for e in catalog.ENTRIES if e.schedule == "music"}


@pytest.mark.parametrize("entry", catalog.ENTRIES, ids=lambda e: e.name)
def test_each_entry_says_what_its_task_says(entry):
    cls, options = _TASKS[entry.name]
    assert cls.metric == entry.metric == task_metric(entry.name)
    assert options == dict(entry.options)
    space = SearchSpace.for_task(entry.name)
    assert space.choices["num_parameters"] == entry.budgets
    assert (space.choices["dropout"] != (0.0,)) == (entry.schedule != "search")
    assert (space.choices["decay"] != (None,)) == (entry.schedule == "ptb")
