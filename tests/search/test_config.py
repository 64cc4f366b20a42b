"""SearchConfig: the paper's defaults, loading from presets, files and --set, and clear errors."""

from __future__ import annotations

import json

import pytest

from cellsearch.errors import UserError
from cellsearch.search.config import SearchConfig, load_config


def test_defaults_are_the_papers():
    config = SearchConfig()
    assert config.tasks == ("arith", "xml", "ptb") and config.filter_task == "memorize"
    assert (config.filter_threshold, config.task_threshold) == (0.95, 0.9)
    assert (
        config.settings_per_task,
        config.best_settings,
        config.experienced_parent,
        config.top_size,
    ) == (20, 100, 420, 100)
    assert config.initial_settings is None  # the full grid for LSTM and GRU
    assert config.space("ptb").dropout == (0.0,)  # no dropout in the search (§3.5)
    assert (
        config.evaluator == "cellsearch.train.evaluate:evaluate"
        and config.mutator == "cellsearch.cells.mutate:mutate"
    )


def test_round_trip_through_json():
    config = load_config(preset="tiny", assignments=["seed=5"])
    data = json.loads(json.dumps(config.to_dict()))
    assert SearchConfig.from_dict(data) == config
    assert config.space("arith").num_parameters == (3000,)


def test_assignments_read_json_values_and_dotted_keys():
    config = load_config(
        assignments=[
            'tasks=["arith", "xml"]',
            "top_size=7",
            "reevaluate_probability=0.25",
            "max_steps=none",
            "max_evaluations=null",
            "evaluator=tests.search.fake:evaluate",
            "space_overrides.arith.num_parameters=[5000]",
            "space_overrides.arith.learning_rate=0.5",
            "evaluation_options.max_epochs=2",
        ]
    )
    assert (
        config.tasks == ("arith", "xml")
        and config.top_size == 7
        and config.reevaluate_probability == 0.25
    )
    assert config.max_steps is None and config.max_evaluations is None
    assert config.evaluator == "tests.search.fake:evaluate"
    assert config.space("arith").num_parameters == (5000,) and config.space(
        "arith"
    ).learning_rate == (0.5,)
    assert dict(config.evaluation_options) == {"max_epochs": 2}


def test_later_sources_replace_earlier_ones(tmp_path):
    toml = tmp_path / "search.toml"
    toml.write_text("top_size = 12\nseed = 4\n[space_overrides.xml]\nnum_parameters = [4000]\n")
    config = load_config(preset="tiny", path=toml, assignments=["seed=9"])
    assert (config.top_size, config.seed, config.settings_per_task) == (12, 9, 2)
    assert set(config.space_overrides) == {
        "xml"
    }  # a file's table replaces the preset's whole table
    as_json = tmp_path / "search.json"
    as_json.write_text(json.dumps({"top_size": 3}))
    assert load_config(path=as_json).top_size == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"assignments": ["top_sizes=3"]}, "unknown search setting 'top_sizes'"),
        ({"assignments": ["top_size"]}, "expects key=value"),
        ({"assignments": ["top_size=0"]}, "top_size must be an integer >= 1"),
        ({"assignments": ["top_size=true"]}, "top_size must be an integer"),
        ({"assignments": ["reevaluate_probability=1.5"]}, r"in \[0, 1\]"),
        ({"assignments": ['tasks=["arith", "chess"]']}, "unknown task 'chess'"),
        (
            {"assignments": ['tasks=["arith", "memorize"]']},
            "filter task memorize cannot also be a search task",
        ),
        ({"assignments": ["tasks=[]"]}, "one or more distinct tasks"),
        (
            {"assignments": ["space_overrides.ptb.learning_rate=[0.5]", 'tasks=["arith"]']},
            "does not use",
        ),
        (
            {"assignments": ["space_overrides.arith.learning_rate=[-1]"]},
            "learning_rate must be a positive number",
        ),
        ({"assignments": ["space_overrides.arith.width=[3]"]}, "unknown hyperparameter 'width'"),
        ({"assignments": ["evaluator=no_colon"]}, "module:function"),
        # Keywords the search passes itself: they would reach the evaluator twice.
        ({"assignments": ["evaluation_options.device=cuda"]}, "cannot set device: .*--device"),
        ({"assignments": ["evaluation_options.data_dir=/d"]}, "cannot set data_dir: .*--data-dir"),
        ({"assignments": ["evaluation_options.stop_at=0.5"]}, "cannot set stop_at: .*filter"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"path": "/nonexistent/search.toml"}, "no configuration file"),
    ],
)
def test_bad_settings_are_user_errors(source, message):
    with pytest.raises(UserError, match=message):
        load_config(**source)


def test_unknown_keys_in_a_file_are_named(tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"top_size": 3, "mutation_rate": 0.1}))
    with pytest.raises(UserError, match="unknown search setting.*mutation_rate"):
        load_config(path=path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="search.json"):
        load_config(path=path)


def test_differing_keys():
    base = load_config(preset="tiny")
    other = load_config(preset="tiny", assignments=["seed=1", "max_steps=99"])
    assert base.differing_keys(other) == ["seed", "max_steps"]
    assert base.differing_keys(load_config(preset="tiny")) == []


def test_every_setting_is_listed_with_its_default():
    import dataclasses

    from cellsearch.search.config import SETTING_HELP, settings_listing

    assert list(SETTING_HELP) == [field.name for field in dataclasses.fields(SearchConfig)]
    listing = settings_listing()
    assert "top_size = 100\n" in listing and "steps_in_flight = 16\n" in listing
    assert "max_steps = null\n" in listing and "may change when resuming" in listing


def test_the_paper_preset_is_the_paper_and_paper_small_its_procedure_at_lower_cost():
    paper, small = load_config(preset="paper"), load_config(preset="paper-small")
    assert paper == SearchConfig()  # the defaults are the paper's procedure
    same = ("tasks", "filter_threshold", "task_threshold", "settings_per_task", "best_settings",
            "experienced_parent", "top_size")
    assert all(getattr(small, key) == getattr(paper, key) for key in same)
    assert small.initial_settings == 20 and small.max_steps == 60


def test_the_example_config_file_is_the_paper_and_names_every_setting():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "docs" / "search.example.toml"
    assert load_config(path=example) == SearchConfig()
    text = example.read_text()
    assert all(name in text for name in SearchConfig.__dataclass_fields__)


def test_a_database_written_before_the_mutator_moved_names_it_as_it_was_and_still_resumes():
    stored = {**SearchConfig().to_dict(), "mutator": "cellsearch.mutate:mutate"}
    assert SearchConfig.from_dict(stored) == SearchConfig()
