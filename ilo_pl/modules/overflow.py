"""Per-sample float16 overflow handling under a ``GradScaler`` (``precision="16-mixed"``).

A ``GradScaler`` skips the optimizer step of the whole batch when any
gradient is non-finite, and halves its scale. ILO's samples are independent
problems, so :class:`OverflowGuard` does that per sample instead:

* after each backward (still-scaled gradients), the gradient rows of a sample
  that failed or whose gradient is non-finite are zeroed, so its batch-mates
  step as if alone (:meth:`OverflowGuard.drop_rows_`);
* once per optimizer step, a healthy sample's non-finite row is taken for an
  overflow: the scale backs off after the step, as the scaler would have done.
  After :data:`OVERFLOW_PATIENCE` such steps in a row it is a failure, and the
  back-offs it caused are undone, so the scale its batch-mates (and later
  problems) run at is as if it had never been there (:meth:`OverflowGuard.count`,
  :meth:`OverflowGuard.back_off`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ilo_pl.compat import scale_tensor
from ilo_pl.policy import host_reads_free
from ilo_pl.modules.tracking import BestIterate, rows_finite, zero_rows_

#: Consecutive optimizer steps a sample's gradient may be non-finite under a GradScaler
#: before it counts as failed: each such step halves the scale, and 25 halvings take any
#: scale a GradScaler reaches in practice (<= 2**24) below 1, where scaling cannot
#: overflow float16.
OVERFLOW_PATIENCE = 25


class OverflowGuard:
    """Streaks of non-finite gradient rows per sample, and the scale back-off they owe.

    Args:
        batch_size: number of problems ``B``.
        device: where the streak counters live.
        patience: consecutive non-finite steps before a sample fails.
        host_reads: whether small values may be read to the host to skip work
            (default: :func:`ilo_pl.policy.host_reads_free` of ``device``).
    """

    def __init__(
        self, batch_size: int, device: torch.device, patience: int = OVERFLOW_PATIENCE, host_reads: Optional[bool] = None
    ) -> None:
        self.patience = int(patience)
        self.host_reads = host_reads_free(device) if host_reads is None else bool(host_reads)
        self.streak = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._bad: Optional[Tensor] = None  # [B] rows non-finite in some micro-batch of this step
        self._backoffs: Optional[Tensor] = None  # halvings owed after this step (may be negative)

    @torch.no_grad()
    def drop_rows_(self, grads: Sequence[Tensor], failed: Tensor) -> None:
        """Per micro-batch, on the still-scaled gradients: note non-finite rows, zero them and the failed ones."""
        if not grads:
            return
        bad = ~rows_finite(grads)
        self._bad = bad if self._bad is None else self._bad | bad
        drop = bad | failed
        if self.host_reads and not bool(drop.any()):
            return
        zero_rows_(grads, drop)

    @torch.no_grad()
    def count(self, tracker: BestIterate, stage_step: int, accumulate: int) -> None:
        """Per optimizer step: update the streaks, mark failures in ``tracker``, set the back-off owed.

        A failure is marked at the step its streak began (``stage_step`` is the
        number of micro-batches run in the stage, this step's included).
        Device ops only.
        """
        bad, self._bad = self._bad, None
        if bad is None:
            return
        bad = bad & ~tracker.failed
        self.streak = torch.where(bad, self.streak + 1, 0)
        newly = self.streak >= self.patience
        began = max(0, stage_step - 1 - (self.patience - 1) * accumulate)
        tracker.mark_failed(newly, began)
        self._backoffs = (bad & ~newly).any().to(torch.float32) - newly.any() * (self.patience - 1.0)

    @torch.no_grad()
    def back_off(self, scaler: Optional[torch.amp.GradScaler]) -> None:
        """After the step: multiply the scale by ``backoff_factor ** owed`` (see :meth:`count`)."""
        n, self._backoffs = self._backoffs, None
        if n is None or scaler is None:
            return
        factor = scaler.get_backoff_factor()
        if self.host_reads:
            k = float(n)
            if k != 0.0:
                scaler.update(new_scale=scaler.get_scale() * factor**k)
            return
        scale = scale_tensor(scaler)  # get_scale() would read it to the host every step
        scaler.update(new_scale=scale * torch.pow(torch.tensor(factor, device=scale.device), n.to(scale.device)))
