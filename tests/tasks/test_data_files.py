"""Checksums, downloads and their errors, with local files only (file:// addresses)."""

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from cellsearch.errors import UserError
from cellsearch.tasks import files, get_task
from cellsearch.tasks.files import DataFile, data_root, ensure_files, verify

CONTENT = b"the cat sat on the mat\n" * 100


def data_file_for(content: bytes, urls=(), path="ptb/ptb.train.txt", member=None) -> DataFile:
    return DataFile(path, hashlib.sha256(content).hexdigest(), len(content), tuple(urls), member)


def serve(tmp_path: Path, name: str, content: bytes) -> str:
    """A file:// address serving `content`."""
    source = tmp_path / "server" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    return source.as_uri()


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSEARCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("CELLSEARCH_DATA")
    assert data_root() == tmp_path / "cache" / "cellsearch"


def test_verify_accepts_the_right_file_and_names_a_bad_one(tmp_path):
    data_file = data_file_for(CONTENT, ["https://example.org/ptb.train.txt"])
    path = tmp_path / "ptb.train.txt"
    path.write_bytes(CONTENT)
    verify(path, data_file)
    path.write_bytes(CONTENT[:-10])
    with pytest.raises(UserError, match=rf"{path} is truncated: 2290 bytes instead of 2300.*"
                                        r"https://example.org/ptb.train.txt"):
        verify(path, data_file)
    path.write_bytes(CONTENT.replace(b"cat", b"dog"))
    with pytest.raises(UserError, match=rf"{path} is corrupt: its sha256 is not"):
        verify(path, data_file)


def test_a_missing_file_is_downloaded_and_verified(tmp_path):
    data_file = data_file_for(CONTENT, [serve(tmp_path, "ptb.train.txt", CONTENT)])
    root = tmp_path / "data"
    (path,) = ensure_files(root, [data_file])
    assert path == root / "ptb" / "ptb.train.txt" and path.read_bytes() == CONTENT
    assert os.listdir(path.parent) == ["ptb.train.txt"]  # no temporary file left behind
    # Present now: used as it is, not fetched again.
    (tmp_path / "server" / "ptb.train.txt").unlink()
    assert ensure_files(root, [data_file]) == [path]


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path):
    corrupt = CONTENT.replace(b"mat", b"hat")
    data_file = data_file_for(CONTENT, [serve(tmp_path, "ptb.train.txt", corrupt)])
    root = tmp_path / "data"
    with pytest.raises(UserError, match="ptb.train.txt is missing and could not be downloaded"
                                        ".*does not match its sha256"):
        ensure_files(root, [data_file])
    assert os.listdir(root / "ptb") == []  # nothing half-written under the real name


def test_the_mirror_is_tried_when_the_first_address_fails(tmp_path):
    urls = [(tmp_path / "nowhere").as_uri(), serve(tmp_path, "x.mat", CONTENT)]
    (path,) = ensure_files(tmp_path / "data", [data_file_for(CONTENT, urls, "music/x.mat")])
    assert path.read_bytes() == CONTENT


def test_archive_members_come_from_one_download(tmp_path, monkeypatch):
    contents = {split: f"{split} words\n".encode() * 50 for split in ("train", "valid", "test")}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for split, content in contents.items():
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{split}.txt")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    url = serve(tmp_path, "simple-examples.tgz", archive.getvalue())
    data_files = [
        data_file_for(content, [url], f"ptb/ptb.{split}.txt", f"data/ptb.{split}.txt")
        for split, content in contents.items()
    ]
    fetched = []
    real_fetch = files.fetch
    monkeypatch.setattr(files, "fetch", lambda u, d: (fetched.append(u), real_fetch(u, d)))
    paths = ensure_files(tmp_path / "data", data_files)
    assert fetched == [url]
    assert [p.read_bytes() for p in paths] == list(contents.values())


def test_missing_without_download_names_the_file_and_the_source(tmp_path):
    data_file = files.MUSIC_FILES["jsb"]
    with pytest.raises(UserError, match=r"music/jsb_chorales.mat is missing; get it from "
                                        r"https://raw.githubusercontent.com/zhegan27"):
        ensure_files(tmp_path, [data_file], download=False)


def test_tasks_report_missing_and_corrupt_files(tmp_path):
    # No network in tests: the download fails, and the message says what to do.
    with pytest.raises(UserError, match=r"ptb/ptb.train.txt.*are missing and could not be "
                                        r"downloaded.*simple-examples.tgz.*--data-dir"):
        get_task("ptb", tmp_path)
    corrupt = tmp_path / "music" / "jsb_chorales.mat"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(UserError, match=rf"{corrupt} is truncated"):
        get_task("jsb", tmp_path)
