"""Generated and hand-written Triton kernels: a layer's window per timestep (`fused`) or per
member (`persistent`), the softmax loss (`cross_entropy`), the clipped SGD update (`sgd`), and the
mixed engine's: its step (`mixed`), its matmuls outside the recurrence (`products`) and its
tensors' copies (`copies`); the grouped ones find their operands through a table copied each call
(`tables`). Importing `fused`, `persistent`, `cross_entropy`, `sgd` or `products` imports Triton;
`mixed` and `copies` load their generated modules at their first launch, and nothing else in the
package imports it."""
