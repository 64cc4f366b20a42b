import json
from pathlib import Path

import pytest

from cellsearch.cells import zoo
from cellsearch.cells.equations import parse
from cellsearch.cells.graph import CellGraph
from cellsearch.cli import main


def test_cells_list(capsys):
    assert main(["cells", "list"]) == 0
    assert capsys.readouterr().out.split() == list(zoo.names())


def test_cells_show_text_json_dot(capsys):
    assert main(["cells", "show", "gru"]) == 0
    assert parse(capsys.readouterr().out) == zoo.get("gru")
    assert main(["cells", "show", "lstm-b", "--format", "json"]) == 0
    assert CellGraph.from_json(capsys.readouterr().out) == zoo.get("lstm-b")
    assert main(["cells", "show", "mut1", "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "mut1"') and dot.count("->") == sum(
        len(n.inputs) for n in zoo.get("mut1").nodes)


def test_cells_show_file(tmp_path, capsys):
    path = tmp_path / "mine.cell"
    path.write_text("h' = relu(W_hh h + W_xh x)\n")
    assert main(["cells", "show", str(path)]) == 0
    assert capsys.readouterr().out == "h' = relu(W_hh h + W_xh x)\n"
    json_path = tmp_path / "mine.json"
    json_path.write_text(zoo.get("tanh").to_json())
    assert main(["cells", "show", str(json_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == zoo.get("tanh").to_dict()


@pytest.mark.parametrize(
    "content, message",
    [
        ("h' = tanh(W_hh h +\n", "bad.cell: line 1, column 19"),
        ("h' = tanh(x)\n", "state 'h' is never read"),
    ],
)
def test_malformed_file_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.cell"
    path.write_text(content)
    assert main(["cells", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_cell_is_one_line_and_exit_2(capsys):
    assert main(["cells", "show", "lstm2"]) == 2
    err = capsys.readouterr().err
    assert "unknown cell 'lstm2'" in err and "gru" in err and err.count("\n") == 1


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_draw_writes_a_picture_of_any_cell(tmp_path, capsys, suffix):
    cell = tmp_path / "mine.cell"
    cell.write_text("z = sigm(W_z x + b_z)\nh' = z * tanh(W_h h) + (1 - z) * h\n")
    for name in ("gru", str(cell)):
        picture = tmp_path / f"{Path(name).stem}{suffix}"
        assert main(["cells", "draw", name, "-o", str(picture), "--engine", "matplotlib"]) == 0
        assert picture.stat().st_size > 5000
    if suffix == ".svg":
        assert "z = sigm" in (tmp_path / f"mine{suffix}").read_text()  # the user's names


def test_draw_refuses_an_unknown_format(tmp_path, capsys):
    assert main(["cells", "draw", "gru", "-o", str(tmp_path / "gru.jpg")]) == 2
    assert "must end in .svg, .png or .pdf" in capsys.readouterr().err


def test_an_error_in_a_cell_file_names_its_line_column_and_the_users_words(tmp_path, capsys):
    cell = tmp_path / "typo.cell"
    cell.write_text("z = sigm(W_z x + b_z)\nh' = z * tanh(W_h hh) + (1 - z) * h\n")
    assert main(["cells", "show", str(cell)]) == 2
    err = capsys.readouterr().err
    assert f"{cell}: line 2, column 19: hh is not defined" in err and "_#" not in err


@pytest.mark.parametrize("mode, modules", [("dot", 2), ("cublas", 2), ("persistent", 1)])
def test_cells_kernels_prints_the_generated_kernels_with_the_users_names(capsys, mode, modules):
    assert main(["cells", "kernels", "gru", "--mode", mode]) == 0
    out = capsys.readouterr().out
    assert out.count("# ==== gru,") == modules  # the GRU's step has two segments
    assert out.count("def forward_kernel(") == out.count("def backward_kernel(") == modules
    # statements say which value of the equations they compute
    assert "  # r = sigm(W_xr x + W_hr h + b_r)" in out
    assert "  # h' = z * h + (1 - z) * h~" in out
    assert "  # d z = sigm(W_xz x + W_hz h + b_z)" in out
    for source in out.split("# ====")[1:]:  # each one a valid Python module
        compile(source.split("====\n", 1)[1], "<kernels>", "exec")


def test_cells_kernels_of_a_cell_file(tmp_path, capsys):
    path = tmp_path / "mine.cell"
    path.write_text("gate = sigm(W_xg x + W_hg h)\nh' = gate * tanh(W_xh x) + h\n")
    assert main(["cells", "kernels", str(path), "--mode", "persistent"]) == 0
    assert "# gate = sigm(W_xg x + W_hg h)" in capsys.readouterr().out
