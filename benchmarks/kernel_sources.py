"""Whether two revisions generate the same Triton kernels (issue 19: the layout change must not
change what runs on a GPU). Dumps every kernel module generated for the zoo's cells and 40
mutants, in every mode, from the revision on PYTHONPATH (either package layout):

    PYTHONPATH=<old>/src python benchmarks/kernel_sources.py old.json
    PYTHONPATH=src python benchmarks/kernel_sources.py new.json
    python benchmarks/kernel_sources.py --compare old.json new.json

The comparison ignores the header line naming the generating module.
"""

import json
import random
import sys


def dump(path: str) -> None:
    import torch

    try:
        from cellsearch.cells import zoo
        from cellsearch.cells.mutate import mutate
        from cellsearch.engine.kernels import fused, persistent
        from cellsearch.engine.nn import parameter_shape
        from cellsearch.engine.plan import plan, window_inputs
    except ImportError:  # the layout before issue 19
        from cellsearch import fused, persistent, zoo
        from cellsearch.compile import plan, window_inputs
        from cellsearch.mutate import mutate
        from cellsearch.nn import parameter_shape
    graphs = {name: zoo.get(name) for name in zoo.names()}
    for seed in range(40):
        parent = zoo.get(random.Random(seed).choice(["gru", "lstm"]))
        graphs[f"mutant{seed}"] = mutate(parent, random.Random(seed)).graph
    sources = {}
    for name, graph in graphs.items():
        plan_ = plan(graph)
        loop = fused.fused_loop(plan_)
        segments = [item for item in loop if isinstance(item, fused.Segment)]
        for index, segment in enumerate(segments):
            for dot in (True, False):
                sources[f"{name}/segment{index}/dot={dot}"] = fused.kernel_source(segment, dot)
        for position, gradients in fused.operand_gradients(plan_).items():
            sources[f"{name}/position{position}/gradients"] = fused.kernel_source(
                loop[position], True, gradients)
        params = {node.param: torch.zeros(1, *parameter_shape(node, 1))
                  for node in graph.parameters}
        names = tuple(window_inputs(plan_, params, torch.zeros(1, 1, 1, 1))[0])
        for hoist in (True, False):
            sources[f"{name}/persistent/hoist={hoist}"] = persistent.kernel_source(
                plan_, names, hoist)
    with open(path, "w") as handle:
        json.dump(sources, handle)
    print(f"{len(sources)} kernel modules written to {path}")


def compare(first: str, second: str) -> int:
    def body(source: str) -> str:
        return source.split("\n", 1)[1]  # (not the header naming the generating module)

    a, b = (json.load(open(path)) for path in (first, second))
    differing = sorted(key for key in a.keys() | b.keys()
                       if key not in a or key not in b or body(a[key]) != body(b[key]))
    print(f"{len(a)} and {len(b)} kernel modules; {len(differing)} differ"
          + (f": {', '.join(differing[:10])}" if differing else ""))
    return 1 if differing else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        sys.exit(compare(*sys.argv[2:4]))
    dump(sys.argv[1])
