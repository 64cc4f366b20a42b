"""Any `--set` assignment or configuration file is either a configuration or a UserError with a
short message, never another exception (hypothesis)."""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellsearch.errors import UserError
from cellsearch.search.config import SearchConfig, load_config

FIELDS = [field for field in SearchConfig.__dataclass_fields__]
KEYS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(["evaluation_options", "space_overrides.arith", "space_overrides.memorize"])
    .flatmap(lambda prefix: st.sampled_from(
        ["max_epochs", "epoch_windows", "num_parameters", "num_layers", "learning_rate",
         "schedule", "capture", "engine", "loss_normalization", "x"]).map(
        lambda name: f"{prefix}.{name}")),
    st.text(string.ascii_letters + "._", min_size=1, max_size=20),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**4000, max_value=10**4500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def text_of(value) -> str:
    try:
        return json.dumps(value)
    except ValueError:  # integers too long for str()
        return "1" * 5000


def outcome(assignments: list[str]) -> None:
    try:
        load_config(preset="tiny", assignments=assignments)
    except UserError as error:
        assert len(str(error)) < 2000, str(error)[:200]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEYS, VALUES | st.text(max_size=30)), min_size=1, max_size=3))
def test_any_set_is_a_config_or_a_user_error(pairs):
    outcome([f"{key}={value if isinstance(value, str) else text_of(value)}" for key, value in pairs])


def test_known_offenders_are_user_errors():
    for assignment in ["tasks=[[1]]", "tasks=" + "[" * 5000 + "]" * 5000, "top_size=" + "9" * 5000,
                       "evaluation_options.max_epochs=NaN", "seed=1e400", "tasks=arith",
                       "task_threshold=" + "9" * 400, "filter_threshold=" + "9" * 400,
                       "space_overrides.arith.learning_rate=[" + "9" * 400 + "]"]:
        outcome([assignment])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       suffix=st.sampled_from([".json", ".toml"]))
def test_any_config_file_is_a_config_or_a_user_error(tmp_path, content, suffix):
    path = tmp_path / f"search{suffix}"
    path.write_bytes(content)
    try:
        load_config(path=path)
    except UserError as error:
        assert len(str(error)) < 2000


def test_config_files_that_broke_before(tmp_path):
    cases = {
        "a.toml": b"[[tasks]]\nname = 'arith'\n",
        "b.json": b"\xff\xfe not utf-8",
        "c.json": b"[" * 100000 + b"]" * 100000,
        "d.json": b'{"top_size": ' + b"9" * 5000 + b"}",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        try:
            load_config(path=path)
        except UserError:
            pass
