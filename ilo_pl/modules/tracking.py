"""``BestIterate``: each sample's best (or last) iterate per stage, and its failures, for one problem batch.

Shaped like a metric: :meth:`BestIterate.begin_stage` opens a stage's record,
:meth:`BestIterate.update` scores an iterate, :meth:`BestIterate.mark_failed`
records non-finite samples, :meth:`BestIterate.compute` picks each sample's
iterate over all stages. It needs no Trainer, so it is tested directly.

Every sample is its own: rows are compared, copied and flagged independently,
so a sample's record never depends on its batch-mates. On the CPU (where
reading a value is free) a few counts are read to the host to turn the usual
cases into no-ops or plain copies; elsewhere (``host_reads=False``) it stays
on the device and never stalls the queue.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ilo_pl.policy import host_reads_free
from ilo_pl.problem import ProblemBatch, ProblemResult, Solution

INF = float("inf")


def copy_rows_(dst: Tensor, src: Tensor, rows: Tensor, host_read: bool) -> None:
    """``dst[b] = src[b]`` for the ``[B]`` bool ``rows``, in place and exact.

    With ``host_read`` the mask is read first so that the usual cases, all
    rows or none, are a plain copy or nothing (``torch.where`` costs ~7 copies
    on the CPU); without it one ``torch.where`` and no host sync.
    """
    if host_read:
        n = int(rows.sum())
        if n == 0:
            return
        if n == rows.numel():
            dst.copy_(src)
            return
    torch.where(rows.view(-1, *([1] * (dst.dim() - 1))), src, dst, out=dst)


def zero_rows_(tensors: Iterable[Tensor], rows: Tensor) -> None:
    """Zero the rows flagged by the ``[B]`` bool ``rows`` of each ``[B, ...]`` tensor, in place.

    ``masked_fill``, not a multiplication: a NaN row times 0 stays NaN.
    """
    for t in tensors:
        t.masked_fill_(rows.view(-1, *([1] * (t.dim() - 1))), 0.0)


def where_rows(rows: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a[i]`` where the ``[B]`` bool ``rows[i]``, else ``b[i]`` (a new tensor)."""
    return torch.where(rows.view(-1, *([1] * (a.dim() - 1))), a, b)


class BestIterate:
    """Per-sample best iterate of each stage (by noiseless measurement error) and per-sample failures.

    Args:
        batch_size: number of problems ``B``.
        device: where the records live.
        selection: ``"best"`` (lowest error over all stages) or ``"last"``
            (each stage's latest finite iterate; the last stage's is returned).
        host_reads: whether values may be read to the host (default:
            :func:`ilo_pl.policy.host_reads_free` of ``device``).

    Attributes:
        records: one dict per stage begun: ``loss`` ``[B]``, ``state`` (the
            kept iterate's entries), ``image`` (its render, ``None`` until a
            finite iterate was scored) and ``extra`` (whatever the caller
            attached, e.g. the stage's feasible set).
        fail_at: ``[B, 2]`` long: ``(stage, step)`` of each sample's first
            failure, ``-1`` while healthy.
    """

    def __init__(
        self, batch_size: int, device: torch.device, selection: str = "best", host_reads: Optional[bool] = None
    ) -> None:
        if selection not in ("best", "last"):
            raise ValueError(f"selection must be 'best' or 'last'; got {selection!r}")
        self.selection = selection
        self.device = torch.device(device)
        self.host_reads = host_reads_free(self.device) if host_reads is None else bool(host_reads)
        self.records: List[Dict[str, Any]] = []
        #: The first stage's starting state (copied; the records' states become the best iterates).
        self.start: Optional[Dict[str, Tensor]] = None
        self.fail_at = torch.full((batch_size, 2), -1, dtype=torch.long, device=self.device)
        # Host-side "some sample failed" flag, kept only with host reads: lets the healthy
        # case skip the per-step failure bookkeeping without reading the device.
        self._host_failed = False

    def __len__(self) -> int:
        return self.fail_at.shape[0]

    # ------------------------------------------------------------------ stages
    def begin_stage(self, state: Mapping[str, Tensor], **extra: Any) -> None:
        """Open the next stage's record, starting from ``state`` (copied)."""
        if not self.records:
            self.start = {k: v.detach().clone() for k, v in state.items()}  # on the device: no sync here
        self.records.append({
            "loss": torch.full((len(self),), INF, device=self.device),
            "state": {k: v.detach().clone() for k, v in state.items()},
            "image": None,
            "extra": extra,
        })

    @property
    def stage(self) -> int:
        """Index of the current stage (``-1`` before the first)."""
        return len(self.records) - 1

    # ------------------------------------------------------------------ failures
    @property
    def failed(self) -> Tensor:
        """``[B]`` bool: samples marked failed."""
        return self.fail_at[:, 0] >= 0

    def maybe_failed(self) -> bool:
        """``False`` only when no sample can have failed (known for free with host reads)."""
        return not self.host_reads or self._host_failed

    def _any(self, mask: Tensor) -> bool:
        return bool(mask.any()) if self.host_reads else True

    @torch.no_grad()
    def mark_failed(self, newly: Tensor, step: int) -> None:
        """Record ``(current stage, step)`` for the samples flagged in ``newly`` (``[B]`` bool).

        Samples already failed keep their first failure. In place with Python
        scalars: no host-to-device copy (and no stream sync) per step.
        """
        newly = newly & ~self.failed
        if self._any(newly):
            self.fail_at[:, 0].masked_fill_(newly, self.stage)
            self.fail_at[:, 1].masked_fill_(newly, step)
            if self.host_reads:
                self._host_failed = True

    @torch.no_grad()
    def check_gradients(self, grads: Sequence[Tensor], step: int) -> None:
        """Mark the samples whose gradient rows hold inf/NaN as failed.

        A row's sum is finite iff all its entries are (inf and NaN propagate,
        inf - inf is NaN; an overflow of finite entries beyond 3e38 is
        divergence anyway): one read pass per gradient, no temporary of its size.
        """
        if not grads:
            return
        total = row_sums(grads)
        # With host reads one read of the grand total settles the usual all-finite case.
        if self.host_reads and math.isfinite(float(total.sum())):
            return
        self.mark_failed(~torch.isfinite(total), step)

    @torch.no_grad()
    def zero_failed_(self, grads: Iterable[Tensor]) -> None:
        """Zero the gradient rows of failed samples: they keep their last finite iterate."""
        if not self.maybe_failed():
            return
        failed = self.failed
        if not self._any(failed):
            return
        zero_rows_(grads, failed)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def update(
        self, image: Tensor, err: Tensor, per_sample: Tensor, state: Mapping[str, Tensor], names: Iterable[str], step: int
    ) -> Optional[bool]:
        """Score an iterate of the current stage; keep it for the samples it improves.

        Args:
            image: its render ``[B, C, H, W]``.
            err: its noiseless measurement error ``[B]`` (the ranking).
            per_sample: its loss ``[B]`` (only its finiteness matters here).
            state: its state; only the entries in ``names`` (the stage's
                variables) are copied: fixed entries never change within a stage.
            step: the stage step, recorded for a sample that turns non-finite.

        Returns:
            Whether every sample's loss is finite, where that is known without
            a host sync (host reads), else ``None``.
        """
        err = err.detach().float()
        best = self.records[-1]
        # err + loss is finite iff both are (an overflow past 3e38 is divergence anyway).
        finite = torch.isfinite(err + per_sample.detach())
        improved = finite & (err < best["loss"]) if self.selection == "best" else finite
        all_finite: Optional[bool] = None
        if self.host_reads:
            # One host read of two counts turns the usual cases into no-ops or plain
            # copies; no per-sample Python work.
            n_finite, n_improved = torch.stack([finite.sum(), improved.sum()]).tolist()
            b = finite.numel()
            all_finite = n_finite == b
            if not all_finite:
                self.mark_failed(~finite, step)
            if n_improved == 0:
                return all_finite
            if n_improved == b:
                # The loss and the image are fresh tensors each step, never written to:
                # keep references. The variables change in place: copy those.
                best["loss"] = err
                for name in names:
                    best["state"][name].copy_(state[name].detach())
                best["image"] = image.detach().float()
                return all_finite
        else:
            # Recorded on the device without a host sync; read once at the end.
            self.mark_failed(~finite, step)
        best["loss"] = torch.where(improved, err, best["loss"])
        # The state entries are the record's own copies: updated in place, no allocation.
        for name in names:
            copy_rows_(best["state"][name], state[name].detach(), improved, self.host_reads)
        img = image.detach().float()
        # Out of place: best["image"] may be a step's own render (kept by reference above).
        best["image"] = img.clone() if best["image"] is None else where_rows(improved, img, best["image"])
        return all_finite

    @torch.no_grad()
    def replace(self, index: int, state: Mapping[str, Tensor], image: Tensor, err: Tensor, render: Any) -> None:
        """Replace stage ``index``'s kept iterate by ``(state, image, err)`` where it is finite.

        For a rewrite of a finished stage's solution (Algorithm 1's projection
        to the range): the record then always renders to its image and has its
        loss. A sample whose new error or state is not finite keeps its old
        iterate (``render(state)`` draws the old image when none was kept).
        """
        rec = self.records[index]
        err = err.detach().float()
        ok = torch.isfinite(err)
        for v in state.values():
            ok &= torch.isfinite(v.flatten(1)).all(1)
        old_image = rec["image"] if rec["image"] is not None else render(rec["state"])
        rec["state"] = {k: where_rows(ok, v, rec["state"][k]) for k, v in state.items()}
        rec["image"] = where_rows(ok, image.float(), old_image.float())
        rec["loss"] = torch.where(ok, err, rec["loss"])

    @torch.no_grad()
    def take_rows_(self, rows: Tensor) -> None:
        """Keep only the samples ``rows`` (``[N]`` long, on :attr:`device`), in that order.

        Every record, the start and the failures are cut down alike; the
        records' ``extra`` entries are the caller's to cut (restarts pruned
        after a stage, :func:`ilo_pl.modules.restarts.keep_best_`).
        """
        for rec in self.records:
            rec["loss"] = rec["loss"].index_select(0, rows)
            rec["state"] = {k: v.index_select(0, rows) for k, v in rec["state"].items()}
            if rec["image"] is not None:
                rec["image"] = rec["image"].index_select(0, rows)
        if self.start is not None:
            self.start = {k: v.index_select(0, rows) for k, v in self.start.items()}
        self.fail_at = self.fail_at.index_select(0, rows)
        if self.host_reads:
            self._host_failed = bool(self.failed.any())

    # ------------------------------------------------------------------ result
    @torch.no_grad()
    def compute(self, batch: ProblemBatch, splits: Sequence[int], render: Any) -> ProblemResult:
        """Pick each sample's iterate over all stages.

        Args:
            batch: the problem batch.
            splits: the split of each stage.
            render: ``render(state, split) -> image`` for a stage without any
                finite iterate (its start is returned).
        """
        losses = torch.stack([r["loss"] for r in self.records])  # [S, B]
        if self.selection == "best":
            which = losses.argmin(0)
        else:  # the last stage with a finite iterate
            which = (torch.isfinite(losses) * torch.arange(1, losses.shape[0] + 1, device=losses.device)[:, None]).argmax(0)
        images, solutions = [], []
        for b in range(len(batch)):
            s = int(which[b])
            rec = self.records[s]
            img = rec["image"]
            if img is None:  # no finite iterate at all: render the stage start
                img = render(rec["state"], splits[s])
            images.append(img[b : b + 1])
            solutions.append(Solution(
                split=splits[s], stage=s,
                state={k: v[b : b + 1].detach().cpu().clone() for k, v in rec["state"].items()},
            ))
        failed = [
            None if st < 0 else f"non-finite loss or gradient (NaN/inf) at stage {st}, step {step}; "
            "the output is the best finite iterate before it" + ("" if torch.isfinite(losses[:, b]).any() else " (none: no finite iterate)")
            for b, (st, step) in enumerate(self.fail_at.tolist())
        ]
        return ProblemResult(
            batch=batch,
            images=torch.cat(images).float().cpu(),
            measurement_loss=losses.gather(0, which[None])[0].cpu(),
            solutions=solutions,
            stage_losses=[r["loss"].cpu() for r in self.records],
            failed=failed,
            start=None if self.start is None else Solution(
                split=splits[0], stage=0, state={k: v.cpu() for k, v in self.start.items()}
            ),
        )


def row_sums(grads: Sequence[Tensor]) -> Tensor:
    """``[B]`` float32: each sample's sum over all of ``grads``' rows; finite iff every entry is."""
    total = grads[0].flatten(1).sum(1, dtype=torch.float32)
    for g in grads[1:]:
        total = total + g.flatten(1).sum(1, dtype=torch.float32)
    return total


def rows_finite(grads: Sequence[Tensor]) -> Tensor:
    """``[B]`` bool: whether every entry of each sample's rows in ``grads`` is finite (see :meth:`BestIterate.check_gradients`)."""
    return torch.isfinite(row_sums(grads))
