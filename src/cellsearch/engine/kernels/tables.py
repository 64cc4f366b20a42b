"""A launch's table of addresses and sizes, copied to the device each call: how the grouped
kernels (`sgd.GroupedSGD`, `products`, `copies`, the grouped loss of `cross_entropy` and the
whole-window `mixed.PersistentKernels`) find operands that live anywhere and move from call to
call. Torch only: importing it loads no Triton."""

from __future__ import annotations

import numpy as np
import torch


class Table:
    """Where one call site's table lives on the device, copied there each call from pinned host
    memory allocated once: a captured step's copy replays from it, so each step (and each
    launch in it) keeps a table of its own, as long as its CUDA graph, and until the replays
    queued from that have run (`train.steps.Mixer` keeps a dropped step so long). An eager call
    waits for the last one's copy to have read the host memory before writing it anew."""

    def __init__(self):
        self.host: torch.Tensor | None = None
        self.device: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None  # the last eager call's copy

    def upload(self, values: np.ndarray, device: torch.device) -> torch.Tensor:
        """`values` (int64) on `device`, flat."""
        values = np.ascontiguousarray(values, dtype=np.int64).ravel()
        if device.type != "cuda":  # (Triton's interpreter)
            return torch.from_numpy(values).to(device)
        if self.host is None or self.host.numel() != len(values):
            self.host = torch.empty(len(values), dtype=torch.int64, pin_memory=True)
            self.device = torch.empty(len(values), dtype=torch.int64, device=device)
            self.copied = None
        if self.copied is not None:  # (also while capturing: the steps capture "relaxed")
            self.copied.synchronize()  # the last eager call's copy has read the host table
        self.host.copy_(torch.from_numpy(values))
        self.device.copy_(self.host, non_blocking=True)
        # No event in a capture: one recorded there cannot be waited for outside it. A capture
        # that failed copied nothing, and after one that succeeded only its replays copy.
        self.copied = None
        if not torch.cuda.is_current_stream_capturing():
            self.copied = torch.cuda.Event()
            self.copied.record()
        return self.device
