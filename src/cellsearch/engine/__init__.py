"""Running cells: a graph's execution plan and the eager step (`plan`), the torch modules
(`nn`), and the generated Triton kernels (`kernels`). Knows nothing of tasks, training or
search."""
