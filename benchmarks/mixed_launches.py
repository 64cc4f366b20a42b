"""What one training step of the mixed engine launches, counted on any device: the operations of
a `MixedSteps` training step of C populations of different cells (K=4 each, arith's 250K budget,
each cell its own hidden size, 20 x 35 windows), split into the windows' own (`mixed._Window`,
the recurrence) and everything else (each population's embedding, static parts, output layer,
loss, clipped SGD and their backward). At the paper's small shapes a step is bound by its
launches, so this count, which needs no GPU, says what a mix costs beyond its arithmetic.

Counted: aten operations that compute (views and allocations left out), with each call of one of
the step's kernels (`mixed.TorchKernels`' methods: one Triton kernel each on a GPU) counted as one.
The clipped SGD is, as on a GPU, the grouped kernels of `kernels.sgd` (each launch counted, run in
Triton's interpreter here) and the copy of their table, or with `--sgd own` each population's
update in torch. The static parts and output layers are, as on a GPU, formed together by
`kernels.products` (each launch counted, its table's copy too), or with `--products own` each
population's in torch. The windows' copies in and out are counted as on a GPU too: a launch of
`kernels.copies` each, and its table's copy (run in torch here). With `--loss-kernels` the
softmax loss runs as on a GPU too, in the Triton kernels of `kernels.cross_entropy` (each
launch counted): the mixed step's grouped loss for all populations, instead of torch's
operations. With `--window persistent` the window runs as
`mixed.PersistentKernels` launches it: one kernel each way, and its table's copy.


    python benchmarks/mixed_launches.py [--cells 1,4,8,16] [--layers 2] [--sgd grouped|own]
                                        [--products grouped|own] [--loss-kernels]
                                        [--window stage|persistent]
                                        [--skip-kernels]
"""

import argparse
import contextlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # (before Triton is imported; grouped kernels)

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cellsearch.cells import zoo
from cellsearch.engine import mixed
from cellsearch.engine.kernels import copies, cross_entropy, products, sgd, tables
from cellsearch.evaluation.budget import hidden_size_for_budget
from cellsearch.train import bench
from cellsearch.train.model import PopulationModel
from cellsearch.train.steps import MixedSteps, PopulationSteps

# Allocations launch nothing (and a captured step's are made once, at its capture).
ALLOCATIONS = ("aten::empty", "aten::new_empty")
VIEWS = ("aten::view", "aten::_unsafe_view", "aten::t", "aten::transpose", "aten::permute",
         "aten::expand", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze",
         "aten::unbind", "aten::as_strided", "aten::detach", "aten::alias", "aten::split",
         "aten::reshape", "aten::flatten")


class Launches(TorchDispatchMode):
    """Counts the operations run under it, in `window` while a window runs, else in `rest`."""

    def __init__(self):
        super().__init__()
        self.window = self.rest = 0
        self.inside = self.in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_kernel and not func._schema.name.startswith(VIEWS + ALLOCATIONS):
            self.add(1)
        return func(*args, **(kwargs or {}))

    def add(self, count: int) -> None:
        if self.inside:
            self.window += count
        else:
            self.rest += count

    @contextlib.contextmanager
    def kernel(self):
        """One launch, whatever the kernel's torch stand-in runs (other kernels' too)."""
        if self.in_kernel:
            yield
            return
        self.add(1)
        self.in_kernel = True
        try:
            yield
        finally:
            self.in_kernel = False

    @contextlib.contextmanager
    def window_running(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


def _within(real, context):
    def wrapped(*args, **kwargs):
        with context():
            return real(*args, **kwargs)
    return staticmethod(wrapped)


def _one_launch(real, launches: Launches) -> classmethod:
    """The whole window's work each way as one launch, after its table's copy."""
    def launched(cls, *args, **kwargs):
        launches.add(1)  # (its table of matrices)
        with launches.kernel():
            return real(*args, **kwargs)
    return classmethod(launched)


def _counting(launches: Launches, window: str = "stage") -> None:
    """Routes the step kernels and the window's forward and backward through `launches`: the
    stage kernels each a launch, or (`window` "persistent") the window each way one launch and
    its table's copy, as `mixed.PersistentKernels` launches it."""
    if window == "persistent":
        for name in ("forward", "backward"):
            setattr(mixed.TorchKernels, name,
                    _one_launch(getattr(mixed.TorchKernels, name), launches))
    for name in ("stage", "stage_backward"):
        setattr(mixed.TorchKernels, name,
                _within(getattr(mixed.TorchKernels, name), launches.kernel))
    for name in ("forward", "backward"):
        setattr(mixed._Window, name, _within(getattr(mixed._Window, name), launches.window_running))
    for name in ("_grouped_square_sums_kernel", "_grouped_scales_kernel", "_grouped_update_kernel"):
        setattr(sgd, name, _Launched(getattr(sgd, name), launches))
    for name in ("_forward_kernel", "_backward_kernel", "_grouped_forward_kernel",
                 "_grouped_backward_kernel"):
        setattr(cross_entropy, name, _Launched(getattr(cross_entropy, name), launches))
    products._products_kernel = _Launched(products._products_kernel, launches)
    launch_copies = copies.Copies.launch

    def counted_copies(batch, table=None, in_torch=False):  # as on a GPU: a table, a kernel
        if batch.copies:
            launches.add(1)
        with launches.kernel():
            return launch_copies(batch, table, in_torch=True)

    copies.Copies.launch = counted_copies
    upload = tables.Table.upload

    def counted_upload(table, *args):  # a grouped kernel's table: one copy on a GPU
        with launches.kernel():
            return upload(table, *args)

    tables.Table.upload = counted_upload


class _Launched:
    """A Triton kernel whose every launch `launches` counts as one (and runs, unless `skip`)."""

    skip = False

    def __init__(self, kernel, launches: Launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with self.launches.kernel():
                return None if self.skip else self.kernel[grid](*args, **kwargs)
        return launch


def population(graph, task, layers: int, seed: int, K: int = 4, loss_kernels: bool = False
               ) -> PopulationSteps:
    _, _, budget = bench.SHAPES["arith"]
    hidden = hidden_size_for_budget(budget, matrices_per_layer=graph.num_matrices,
                                    biases_per_layer=graph.num_biases, num_layers=layers,
                                    input_size=task.input_size, output_size=task.output_size,
                                    input_kind="embedding")
    model = PopulationModel(graph, K, task.input_size, task.output_size, hidden, layers,
                            "embedding", engine="fused" if loss_kernels else "eager")
    model.reset_parameters([1.0] * K, [seed + k for k in range(K)])
    return PopulationSteps(model, task, bench.BATCH, bench.STEPS, torch.ones(K), None,
                           capture=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="1,4,8,16")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sgd", choices=("grouped", "own"), default="grouped")
    parser.add_argument("--products", choices=("grouped", "own"), default="grouped")
    parser.add_argument("--loss-kernels", action="store_true")
    parser.add_argument("--window", choices=("stage", "persistent"), default="stage",
                        help="the window's kernels: a stage at a time, or the whole window")
    parser.add_argument("--skip-kernels", action="store_true",
                        help="count the Triton kernels' launches without running them in the "
                             "interpreter (slow): a step's values are then garbage, its launches "
                             "the same (none depends on a value)")
    args = parser.parse_args()
    launches = Launches()
    _counting(launches, args.window)
    _Launched.skip = args.skip_kernels
    task = bench._RandomTokens(40)
    names = list(zoo.PAPER_CELLS)
    print(f"# torch {torch.__version__}; a mixed training step, {args.layers} layers, K=4 each, "
          f"{args.sgd} SGD, {args.products} products"
          f"{', the loss in its kernels' if args.loss_kernels else ''}"
          f"{', the window in one kernel each way' if args.window == 'persistent' else ''}")
    print("| cells | operations | in the windows | the rest | the rest per population |")
    print("|---:|---:|---:|---:|---:|")
    for cells in (int(c) for c in args.cells.split(",")):
        graphs = [zoo.get(names[i % len(names)]) if i < len(names) else bench.mutated_graph(i)
                  for i in range(cells)]
        populations = [population(graph, task, args.layers, 10 * i,
                                  loss_kernels=args.loss_kernels)
                       for i, graph in enumerate(graphs)]
        steps = MixedSteps(populations, capture=False, grouped_sgd=args.sgd == "grouped",
                           products_kernel="triton" if args.products == "grouped" else "torch",
                           grouped_loss=args.loss_kernels)  # (as a GPU's, where it works)
        for steps_of_one in populations:
            steps_of_one.load(task.batch)
        steps.train_step()  # the first call makes the mix's tables
        launches.window = launches.rest = 0
        with launches:
            steps.train_step()
        total = launches.window + launches.rest
        print(f"| {cells} | {total:,} | {launches.window:,} | {launches.rest:,} | "
              f"{launches.rest / cells:.0f} |")


if __name__ == "__main__":
    main()
