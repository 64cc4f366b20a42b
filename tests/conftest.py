"""Every test writes cellsearch's cache (generated kernels, the bench's reference figure) to a
directory of the test session's own, never to the user's."""

import pytest


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _own_cache(cache_home, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
