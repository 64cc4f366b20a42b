"""Fixtures for the task tests: the real data directory, and no network ever.

Real-data tests read $CELLSEARCH_DATA, else the project's shared data folder next to the
repository (../shared/data). Without either they skip with the reason, except under CI=true,
where missing data fails the test: CI must run them.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only file:// addresses open; a test that would download fails fast instead of hanging."""
    real_urlopen = urllib.request.urlopen

    def urlopen(url, *args, **kwargs):
        address = getattr(url, "full_url", url)
        if not str(address).startswith("file:"):
            raise urllib.error.URLError(f"network disabled in tests ({address})")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the real-data tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if os.environ.get("CELLSEARCH_DATA"):
        root = Path(os.environ["CELLSEARCH_DATA"])
        if not root.is_dir():
            _unavailable(f"CELLSEARCH_DATA={root} is not a directory")
        return root
    if _SHARED_DATA.is_dir():
        return _SHARED_DATA
    _unavailable(
        "no real data: set CELLSEARCH_DATA to a directory with ptb/ and music/ "
        "(see ../shared/data for the layout) to run this test"
    )


@pytest.fixture(scope="session")
def require_files(real_data_dir):
    """Call with relative paths; skips (fails in CI) unless all exist under the data dir."""

    def require(*paths: str) -> Path:
        missing = [path for path in paths if not (real_data_dir / path).is_file()]
        if missing:
            _unavailable(f"{real_data_dir} lacks {', '.join(missing)}")
        return real_data_dir

    return require
