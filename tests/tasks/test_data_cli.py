"""`cellsearch data sample|stats`, end to end through `cellsearch.cli.main`."""

import re
import xml.etree.ElementTree as ElementTree

import pytest

import cellsearch.cli
from cellsearch.cli import main
from tests.tasks.test_arith import solve


@pytest.fixture(autouse=True)
def data_command(monkeypatch):
    # Only the command under test is registered, so these tests do not depend on the others.
    monkeypatch.setattr(cellsearch.cli, "_COMMAND_MODULES", ("data",))


def test_sample_arith_prints_input_equals_answer(capsys):
    assert main(["data", "sample", "arith", "-n", "25", "--seed", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 25
    for line in lines:
        question, answer = re.fullmatch(r"([a-z0-9+-]+)=(-?\d+)\.", line).groups()
        assert solve(question)[3] == int(answer)
    assert main(["data", "sample", "arith", "-n", "25", "--seed", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["data", "sample", "arith", "-n", "25", "--seed", "5"]) == 0
    assert capsys.readouterr().out.splitlines() != lines


def test_sample_xml_and_memorize(capsys):
    assert main(["data", "sample", "xml", "-n", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    for line in lines:
        ElementTree.fromstring(line)
    assert main(["data", "sample", "memorize", "-n", "3"]) == 0
    for line in capsys.readouterr().out.splitlines():
        assert re.fullmatch(r"([a-z]{5})=\1\.", line)


def test_stats_of_a_synthetic_task(capsys):
    assert main(["data", "stats", "memorize"]) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 28 symbols: 'abcdefghijklmnopqrstuvwxyz=.'" in out
    assert re.search(r"^valid\s+1,000\s+12,000\s+5,000$", out, re.MULTILINE), out
    assert re.search(r"^train\s+fresh each epoch\s+500\s+350,000$", out, re.MULTILINE), out


def test_stats_and_sample_of_real_data(capsys, require_files):
    root = str(require_files("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt"))
    assert main(["data", "stats", "ptb", "--data-dir", root]) == 0
    out = capsys.readouterr().out
    assert "10000 words" in out and re.search(r"^train\s+42,068\s+929,589$", out, re.MULTILINE)
    assert main(["data", "sample", "ptb", "-n", "2", "--data-dir", root]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    root = str(require_files("music/jsb_chorales.mat"))
    assert main(["data", "stats", "jsb", "--data-dir", root]) == 0
    assert re.search(r"^test\s+77\s+4,725\s", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "sample", "sonnets"], "unknown task 'sonnets'; the tasks are memorize, arith"),
        (["data", "stats", "Nottingham"], "unknown task 'Nottingham'"),
        (["data", "sample", "xml", "-n", "-1"], "-n must be at least 0"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "stats", "nottingham", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("cellsearch: error: data file ")
    assert "music/nottingham.mat is missing" in error and "--data-dir" in error


@pytest.mark.parametrize("task, scored", [
    ("arith", r"=(-?\d+\.)$"),  # the answer and the final "."
    ("memorize", r"=([a-z]{5})\.$"),  # the 5 reproduced letters
    ("xml", r"^(.*)$"),  # every character
])
def test_sample_marked_shows_what_is_scored(capsys, task, scored):
    assert main(["data", "sample", task, "-n", "4", "--marked"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, marks in zip(lines[::2], lines[1::2]):
        start, stop = re.search(scored, line).span(1)
        assert marks == " " * start + "^" * (stop - start)
