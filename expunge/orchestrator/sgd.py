"""Plain SGD (with optional momentum) for expunge's trainers and approximate unlearning.

The same arithmetic as `torch.optim.SGD`'s single-tensor path (no weight decay, dampening or Nesterov): for
each parameter with a gradient, `buf = grad` on the first step, then `buf = momentum·buf + grad`, and
`p -= lr·buf` (without momentum, `p -= lr·grad`); `zero_grad` sets the gradients to None. Written here
because the first `torch.optim` optimizer a process builds imports `torch._dynamo`, 1.5-2.3 s on this
machine: more than a SISA shard retrain's training, paid by every `expunge run` process. The results are the
same bit for bit (tests/test_sgd.py compares them with torch.optim.SGD).
"""

from __future__ import annotations

from typing import Iterable

import torch


class SGD:
    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        if lr < 0 or momentum < 0:
            raise ValueError(f"SGD needs lr ≥ 0 and momentum ≥ 0, got lr={lr}, momentum={momentum}")
        self.lr, self.momentum = float(lr), float(momentum)
        self._bufs: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad
            if self.momentum != 0:
                buf = self._bufs[i]
                if buf is None:
                    buf = self._bufs[i] = torch.clone(d).detach()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = buf
            p.add_(d, alpha=-self.lr)
