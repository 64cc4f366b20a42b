"""Checks of `kernels.sgd` against the clipped SGD written out in torch, run by test_sgd.py in
a process of its own (Triton's CPU interpreter needs TRITON_INTERPRET=1 set before
`triton.language` is imported)."""

import torch

from cellsearch.engine.kernels.sgd import BLOCK, clipped_sgd_


def reference(parameters, grads, rates, max_norms):
    """Per member: zero the non-finite elements, one norm over all gradients, scale, step."""
    K = parameters[0].shape[0]
    clean = [torch.zeros_like(p) if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
             for p, g in zip(parameters, grads)]
    norms = torch.stack([torch.cat([g[k].flatten() for g in clean]).double().norm() for k in range(K)])
    scale = rates.double() * torch.clamp(max_norms.double() / (norms + 1e-6), max=1.0)
    return [p.double() - scale.view(-1, *[1] * (p.dim() - 1)) * g.double()
            for p, g in zip(parameters, clean)]


def check_update(device: str = "cpu") -> None:
    K = 3
    generator = torch.Generator().manual_seed(0)
    shapes = [(K, 7, 5), (K, BLOCK + 904), (K, 4), (K, 6, 9)]  # the second spans two blocks
    sizes = [torch.Size(s[1:]).numel() for s in shapes]
    flat = torch.randn(K, sum(sizes), generator=generator)
    grads = [torch.randn(s, generator=generator) * 3 for s in shapes]
    grads[2] = None  # a parameter no output depends on
    grads[3] = torch.randn(K, 9, 6, generator=generator).transpose(1, 2)  # not contiguous
    grads[0][1, 2, 3] = float("nan")  # member 1 diverged in one element...
    grads[1][1, 17] = float("inf")
    grads[1][2, 4999] = float("-inf")
    rates = torch.tensor([0.5, 2.0, 1.0])
    max_norms = torch.tensor([1e3, 1.0, 5.0])  # member 0 unclipped, members 1 and 2 clipped
    flat, rates, max_norms = flat.to(device), rates.to(device), max_norms.to(device)
    grads = [None if g is None else g.to(device) for g in grads]  # (keeping their strides)
    parameters, offset = [], 0
    for shape, size in zip(shapes, sizes):
        parameters.append(flat[:, offset:offset + size].view(shape))
        offset += size
    expected = reference([p.clone() for p in parameters], grads, rates, max_norms)
    untouched = parameters[2].clone()
    clipped_sgd_(flat, sizes, grads, rates, max_norms)
    for ours, theirs in zip(parameters, expected):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(parameters[2], untouched)
    assert torch.isfinite(flat).all()


def check_zero_gradient_keeps_parameters() -> None:
    flat = torch.randn(2, 10)
    before = flat.clone()
    clipped_sgd_(flat, [10], [torch.zeros(2, 10)], torch.ones(2), torch.ones(2))
    assert torch.equal(flat, before)


if __name__ == "__main__":
    check_update()
    check_zero_gradient_keeps_parameters()
    print("all checks passed")
