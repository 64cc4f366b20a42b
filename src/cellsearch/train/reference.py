"""The one-cell throughput `cellsearch bench` last measured on this machine, kept so that a
search's progress line can say what share of it the search's many small populations get: the
measure of how well a GPU is used (nvidia-smi's utilization is not one: it reads 100% while a GPU
time-slices tiny kernels). Plain Python and a JSON file in the user's cache directory.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone

from cellsearch import cache_directory


def _key(device_kind: str) -> str:
    return f"{socket.gethostname()}:{device_kind}"


def save(device_kind: str, task: str, figure: dict) -> None:
    """Keep `figure` (tokens_per_second, population, cell, device, torch) as the reference for
    `task` on this host's `device_kind` ("cuda" or "cpu"). A cache that cannot be written is
    skipped: a benchmark's result does not depend on it."""
    path = cache_directory() / "bench.json"
    try:
        stored = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        stored = {}
    entry = {**figure, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    stored.setdefault(_key(device_kind), {})[task] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(stored, indent=2))
        temporary.replace(path)
    except OSError:
        pass


def load(device_kind: str, task: str = "arith") -> dict | None:
    """The reference for `task` on this host's `device_kind`, or None."""
    try:
        stored = json.loads((cache_directory() / "bench.json").read_text())
        figure = stored[_key(device_kind)][task]
        return figure if figure["tokens_per_second"] > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
