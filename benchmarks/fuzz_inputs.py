"""Hostile input through the real command (issue 24's campaign): random and mutated cell texts
through `cellsearch cells show`, random `--set` values and `--config` files through `cellsearch
search`, each in-process through `cellsearch.cli.main`. Counts exit codes and tracebacks (any
exception other than a UserError reaching `main` is one), and checks that a refused search
created no database and that no message is longer than a few lines.

    python benchmarks/fuzz_inputs.py [--cells 10000] [--settings 1000] [--seed 0]
"""

import argparse
import contextlib
import io
import json
import random
import string
import tempfile
import traceback
from collections import Counter
from pathlib import Path

from cellsearch.cells import zoo
from cellsearch.cli import main
from cellsearch.search.config import SearchConfig

TOKENS = ["h", "c", "x", "h'", "c'", "W_a", "W_b", "b_a", "tanh", "sigm", "relu", "id", "1", "2",
          "(", ")", "+", "-", "*", "=", "\n", " ", "init", "_1", "#", "⊙", "0.5", "\x00", "é"]
FAKES = ["--set", "evaluator=tests.search.fake:evaluate", "--set", "mutator=tests.search.fake:mutate"]


def cell_text(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return " ".join(rng.choice(TOKENS) for _ in range(rng.randrange(60)))
    if kind == 1:  # a zoo cell with a few edits
        text = zoo.source(rng.choice(zoo.names()))
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(TOKENS) + text[at + rng.randrange(4):]
        return text
    if kind == 2:  # deep nesting
        wrapper = rng.choice(["tanh({})", "({})", "W_a {}", "sigm(W_b {}) * h"])
        inner = "h"
        for _ in range(rng.randrange(1, 3000)):
            inner = wrapper.format(inner)
        return f"h' = x + {inner}"
    terms = rng.randrange(1, 3000)  # long sums and products
    return "h' = x + " + rng.choice([" + ", " - ", " * "]).join(f"W_{i} h" for i in range(terms))


def value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2, 10**rng.randrange(1, 6000)])
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), -0.5, 0.0, 1e308, 3.5])
    if kind in (4, 5):
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "max_epochs", "arith", "num_parameters"]): value(rng, depth + 1)
            for _ in range(rng.randrange(3))}


def assignment(rng: random.Random) -> str:
    keys = [*SearchConfig.__dataclass_fields__, "evaluation_options.max_epochs",
            "evaluation_options.epoch_windows", "evaluation_options.engine",
            "space_overrides.arith.num_parameters", "space_overrides.memorize.learning_rate",
            "space_overrides.xml", "nope", "tasks.x"]
    item = value(rng)
    try:
        text = json.dumps(item)
    except ValueError:  # an integer too long for str(): write its digits out
        text = "9" * 5000
    if rng.random() < 0.1:
        text = "[" * rng.randrange(1, 100000) + "]" * rng.randrange(0, 100000)
    return f"{rng.choice(keys)}={text}"


def config_file(rng: random.Random, folder: Path) -> Path:
    path = folder / f"config{rng.randrange(10**9)}{rng.choice(['.json', '.toml', '.yaml'])}"
    kind = rng.randrange(3)
    if kind == 0:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
    elif kind == 1:
        data = {key.split(".")[0]: value(rng) for key in [assignment(rng)]}
        try:
            path.write_text(json.dumps(data))
        except ValueError:
            path.write_text('{"seed": ' + "9" * 5000 + "}")
    else:
        path.write_text(rng.choice(["[[tasks]]\nname = 'arith'\n", "tasks = 'arith'\n",
                                    "top_size = 1e400\n", "[space_overrides]\narith = 3\n",
                                    "seed = -1\n", "x = [" * 2000]))
    return path


def run(argv: list[str], outcomes: Counter, tracebacks: list[str]) -> tuple[int | None, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    except BaseException:  # noqa: BLE001 - a traceback is what we count
        tracebacks.append(traceback.format_exc(limit=3))
        outcomes["traceback"] += 1
        return None, ""
    outcomes[f"exit {code}"] += 1
    return code, err.getvalue()


def main_(cells: int, settings: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        outcomes, tracebacks, long_messages = Counter(), [], 0
        for index in range(cells):
            path = folder / "fuzz.cell"
            path.write_text(cell_text(rng), encoding="utf-8")
            _, err = run(["cells", "show", str(path)], outcomes, tracebacks)
            long_messages += err.count("\n") > 45 or len(err) > 20_000
        print(json.dumps({"cell texts": cells, **outcomes, "long messages": long_messages}))

        outcomes, created = Counter(), 0
        for index in range(settings):
            db = folder / f"search{index}.db"
            if index % 2:
                argv = ["--set", assignment(rng)]
            else:
                argv = ["--config", str(config_file(rng, folder))]
            # The fixed budget comes last, so that a fuzzed max_steps cannot start an endless run.
            argv = ["search", "--db", str(db), "--quiet", "--preset", "tiny", *FAKES, *argv,
                    "--set", "max_steps=0", "--set", "initial_settings=1",
                    "--set", "steps_in_flight=1"]
            code, err = run(argv, outcomes, tracebacks)
            created += code == 2 and db.exists()
            long_messages += err.count("\n") > 45 or len(err) > 20_000
        print(json.dumps({"--set/--config values": settings, **outcomes,
                          "refused but a database was created": created,
                          "long messages": long_messages}))
        for text in tracebacks[:5]:
            print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--settings", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main_(args.cells, args.settings, args.seed)
