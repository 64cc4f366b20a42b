"""One layer's forward and backward over a window in each of `fused.run_fused`'s modes, side by
side: persistent kernels, per-step kernels forming the products with tl.dot, per-step kernels
reading cuBLAS's products. Each is captured in a CUDA graph and replayed (launch overhead as in
training). Prints microseconds per window.

    python benchmarks/layer_modes.py [--cells lstm:1:52,gru:1:40,lstm:512:52]   (cell:K:hidden)
"""

import argparse

import torch

from cellsearch.cells import zoo
from cellsearch.engine.kernels.fused import MODES, run_fused
from cellsearch.engine.kernels.persistent import fits
from cellsearch.engine.plan import plan


def layer_microseconds(graph, mode: str, K: int, B: int, n: int, T: int = 35) -> float:
    generator = torch.Generator(device="cuda").manual_seed(0)

    def leaf(*shape, scale=1.0):
        value = torch.randn(*shape, device="cuda", generator=generator) * scale
        return value.requires_grad_()

    params = {node.param: leaf(K, n, n, scale=0.1) if node.op == "matmul" else leaf(K, n)
              for node in graph.parameters}
    x = leaf(K, T, B, n)
    state = tuple(torch.zeros(K, B, n, device="cuda") for _ in graph.states)
    cell_plan = plan(graph)

    def window():
        outputs, _ = run_fused(cell_plan, params, x, state, mode=mode)
        torch.autograd.grad(outputs.sum(), [x, *params.values()])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            window()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        window()
    for _ in range(3):
        captured.replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(30):
        captured.replay()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 30 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm:1:52,lstm:1:35,gru:1:40,lstm:32:52,lstm:512:52")
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("layer_modes.py measures CUDA kernels: no CUDA device here")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; µs per window "
          f"(T=35, B={args.batch}), forward and backward")
    for spec in args.cells.split(","):
        name, K, n = spec.split(":")
        K, n = int(K), int(n)
        row = [f"{name} K={K} n={n}"]
        for mode in MODES:
            if mode == "persistent" and not fits(args.batch, n):
                continue
            row.append(f"{mode} {layer_microseconds(zoo.get(name), mode, K, args.batch, n):.0f}")
        print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
