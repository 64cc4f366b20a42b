"""benchmarks/init_signal.py, issue 23's experiment on why small-init memorization runs sit at
chance: the printed LSTM's output is a product of two near-zero numbers at §3.7's initialization."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "init_signal.py"


def column(printed: str, cell: str, index: int) -> dict[tuple[int, float], float]:
    """(layers, init) -> the cell's markdown table's column `index` (3: the top layer's output
    RMS, 6: the read phase's input gradient, 7: the learning rate above which SGD on the output
    bias diverges)."""
    section = printed.split(f"### {cell}\n")[1].split("###")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {(int(r[0]), float(r[2])): float(r[index]) for r in rows[1:]}


def test_the_printed_lstms_output_starts_an_order_of_magnitude_below_the_sigmoid_gates():
    printed = subprocess.run([sys.executable, str(SCRIPT), "--cells", "lstm,lstm-as-printed",
                              "--seeds", "2"], capture_output=True, text=True, check=True).stdout
    sigmoid, printed_gate = column(printed, "lstm", 3), column(printed, "lstm-as-printed", 3)
    assert len(sigmoid) == len(printed_gate) == 24  # 4 depths x 6 init scales
    for layers in (1, 2, 3, 4):
        assert printed_gate[layers, 0.3] < sigmoid[layers, 0.3] / 5
        assert sigmoid[layers, 0.3] < sigmoid[layers, 2.8]  # grows with the init scale
    read = column(printed, "lstm", 6)  # the signal to store the letters fades with depth
    assert read[4, 0.3] < read[3, 0.3] < read[2, 0.3] < read[1, 0.3]
    assert read[4, 0.3] < read[1, 0.3] / 100
    # (~14.6 scored targets a row of 20, near-uniform predictions over 26 letters and the rest)
    assert 3 < column(printed, "lstm", 7)[1, 0.3] < 4
