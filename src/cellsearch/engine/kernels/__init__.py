"""Generated and hand-written Triton kernels: a layer's window per timestep (`fused`) or per
member (`persistent`), the softmax loss (`cross_entropy`), the clipped SGD update (`sgd`) and the
matmuls of a mixed step outside its recurrence (`products`); the grouped ones find their operands
through a table copied each call (`tables`).
Importing a kernel module imports Triton; nothing else in the package does."""
