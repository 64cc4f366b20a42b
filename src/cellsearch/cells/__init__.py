"""Cells as data: the graph IR (`graph`), the paper's equation language (`equations`), the
operation table every backend derives from (`ops`), the paper's cells (`zoo`) and the six
transformations of §3.2 (`mutate`). Knows nothing of torch, tasks or storage."""
