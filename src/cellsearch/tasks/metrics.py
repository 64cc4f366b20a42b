"""The tasks' metrics over a population's outputs, as sums that accumulate over windows.

The trainer runs K models at once, so outputs are (T, K, B, V): logits for the softmax tasks,
pre-sigmoid logits (V = 88) for music. Each `*_stats` function returns per-member sums (K,) for one
window, plus the number of scored predictions; the trainer adds windows up and `summarize` turns
the totals into the metrics of the paper:

- softmax tasks: accuracy (the search metric of Table 1), nll per prediction, perplexity = exp(nll);
- music: nll per timestep, summed over the 88 notes (Table 2), and frame accuracy
  TP / (TP + FP + FN) over all scored frames with notes predicted on where p > 0.5
  (Bay et al. 2009, as used by Boulanger-Lewandowski et al. 2012).

The sums keep their autograd graph (`loss_sum`, `nll_sum`), so a trainer may take its loss from
them; the counts never need gradients. Devices and dtypes follow the inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernels: bool = False,
    loss_only: bool = False,
) -> dict[str, torch.Tensor]:
    """logits (T, K, B, V), targets (T, B) int64, mask (T, B) -> per-member sums; bias (K, V)
    when the logits still lack the output layer's bias.

    Returns loss_sum (K,): summed cross-entropy of the scored predictions; correct (K,): how many
    of them have the target as argmax; count (): the number of scored predictions (mask sum).
    With `kernels` (CUDA, Triton), the cross-entropy and argmax run in `kernels.cross_entropy`.
    With `loss_only` (a training step, which reports no metric), loss_sum alone.
    """
    T, K, B, V = logits.shape
    weights = mask.to(logits.dtype).unsqueeze(1)  # (T, 1, B)
    if kernels:
        from cellsearch.engine.kernels.cross_entropy import (
            softmax_cross_entropy,  # (imports Triton)
        )

        nll, hits = softmax_cross_entropy(logits, targets, bias)
    else:
        if bias is not None:
            logits = logits + bias.view(1, K, 1, V)
        targets = targets.unsqueeze(1).expand(T, K, B)  # (T, K, B)
        nll = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
        nll = nll.view(T, K, B)
        hits = None if loss_only else (logits.detach().argmax(dim=-1) == targets).to(logits.dtype)
    loss_sum = (nll * weights).sum(dim=(0, 2))
    if loss_only:
        return {"loss_sum": loss_sum}
    return {
        "loss_sum": loss_sum,
        "correct": (hits * weights).sum(dim=(0, 2)),
        "count": weights.sum().detach(),
    }


def sigmoid_stats(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, loss_only: bool = False
) -> dict[str, torch.Tensor]:
    """logits (T, K, B, 88), targets (T, B, 88) in {0, 1}, mask (T, B) -> per-member sums.

    Returns nll_sum (K,): binary cross-entropy summed over notes and scored timesteps;
    true_pos, false_pos, false_neg (K,): note counts over scored timesteps with p > 0.5 as "on";
    count (): the number of scored timesteps. With `loss_only`, nll_sum alone.
    """
    targets = targets.to(logits.dtype).unsqueeze(1).expand_as(logits)  # (T, K, B, 88)
    weights = mask.to(logits.dtype).unsqueeze(1)  # (T, 1, B)
    nll = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=-1)
    if loss_only:
        return {"nll_sum": (nll * weights).sum(dim=(0, 2))}
    predicted = (logits.detach() > 0).to(logits.dtype)  # sigmoid(x) > 0.5 exactly when x > 0
    weights4 = weights.unsqueeze(-1)  # (T, 1, B, 1)
    return {
        "nll_sum": (nll * weights).sum(dim=(0, 2)),
        "true_pos": (predicted * targets * weights4).sum(dim=(0, 2, 3)),
        "false_pos": (predicted * (1 - targets) * weights4).sum(dim=(0, 2, 3)),
        "false_neg": ((1 - predicted) * targets * weights4).sum(dim=(0, 2, 3)),
        "count": weights.sum().detach(),
    }


def summarize(total: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accumulated sums -> metrics, each a (K,) tensor (NaN where nothing was scored).

    Softmax sums give accuracy, nll and perplexity; music sums give nll and frame_accuracy.
    """
    count = total["count"]
    if "loss_sum" in total:
        nll = total["loss_sum"] / count
        return {
            "accuracy": total["correct"] / count,
            "nll": nll,
            "perplexity": torch.exp(nll),
        }
    # A member that predicts no note where none sounds has nothing to be wrong about: 1.
    notes = total["true_pos"] + total["false_pos"] + total["false_neg"]
    frame_accuracy = torch.where(notes > 0, total["true_pos"] / notes.clamp(min=1), 1.0)
    nll = total["nll_sum"] / count
    if count == 0:
        frame_accuracy = torch.full_like(nll, math.nan)
    return {"nll": nll, "frame_accuracy": frame_accuracy}
