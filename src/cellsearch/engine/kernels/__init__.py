"""Generated and hand-written Triton kernels: a layer's window per timestep (`fused`) or per
member (`persistent`), the softmax loss (`cross_entropy`) and the clipped SGD update (`sgd`).
Importing a kernel module imports Triton; nothing else in the package does."""
