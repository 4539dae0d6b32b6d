"""``BestIterate`` on its own (no Trainer): scoring, failures, selection, rewrite, result."""

from __future__ import annotations

import math

import pytest
import torch

from ilo_pl.problem import ProblemBatch
from ilo_pl.modules.tracking import BestIterate, copy_rows_, rows_finite

READS = pytest.mark.parametrize("host_reads", [True, False], ids=["host-reads", "device-path"])


def _step(t: BestIterate, errs, value: float, step: int, name: str = "v"):  # noqa: ANN001, ANN201
    state = {name: torch.full((2, 4), value)}
    image = torch.full((2, 3, 2, 2), value)
    err = torch.tensor(errs, dtype=torch.float32)
    return t.update(image, err, err.clone(), state, [name], step)


@READS
def test_keeps_each_rows_best_through_all_none_and_some_improving(host_reads: bool) -> None:
    t = BestIterate(2, "cpu", host_reads=host_reads)
    t.begin_stage({"v": torch.zeros(2, 4)})
    script = [([1.0, 1.0], 1.0), ([0.5, 2.0], 2.0), ([3.0, 0.7], 3.0), ([5.0, 5.0], 4.0), ([0.4, math.nan], 5.0)]
    for step, (errs, value) in enumerate(script):
        _step(t, errs, value, step)
    best = t.records[-1]
    assert torch.equal(best["loss"], torch.tensor([0.4, 0.7]))
    assert best["state"]["v"][0].unique().tolist() == [5.0] and best["state"]["v"][1].unique().tolist() == [3.0]
    assert best["image"][0].unique().tolist() == [5.0] and best["image"][1].unique().tolist() == [3.0]
    assert t.fail_at.tolist() == [[-1, -1], [0, 4]]  # the NaN row failed, at its step


@READS
def test_all_finite_is_reported_only_where_free(host_reads: bool) -> None:
    t = BestIterate(2, "cpu", host_reads=host_reads)
    t.begin_stage({"v": torch.zeros(2, 4)})
    assert _step(t, [1.0, 2.0], 1.0, 0) is (True if host_reads else None)
    assert _step(t, [1.0, math.inf], 1.0, 1) is (False if host_reads else None)


def test_last_selection_keeps_the_latest_finite_iterate() -> None:
    t = BestIterate(2, "cpu", selection="last")
    t.begin_stage({"v": torch.zeros(2, 4)})
    _step(t, [1.0, 1.0], 1.0, 0)
    _step(t, [9.0, math.nan], 2.0, 1)
    assert t.records[-1]["state"]["v"][:, 0].tolist() == [2.0, 1.0]


def test_first_failure_is_kept_and_failed_rows_are_zeroed() -> None:
    t = BestIterate(3, "cpu")
    t.begin_stage({"v": torch.zeros(3, 4)})
    assert not t.maybe_failed()
    t.mark_failed(torch.tensor([False, True, False]), 3)
    t.begin_stage({"v": torch.zeros(3, 4)})
    t.mark_failed(torch.tensor([False, True, True]), 7)
    assert t.fail_at.tolist() == [[-1, -1], [0, 3], [1, 7]]
    g = torch.ones(3, 4)
    g[1] = float("nan")
    t.zero_failed_([g])
    assert g.tolist() == [[1.0] * 4, [0.0] * 4, [0.0] * 4]


@READS
def test_check_gradients_marks_non_finite_rows(host_reads: bool) -> None:
    t = BestIterate(3, "cpu", host_reads=host_reads)
    t.begin_stage({"v": torch.zeros(3, 2)})
    a, b = torch.zeros(3, 2), torch.zeros(3, 5, 5)
    a[2, 1] = float("inf")
    b[0, 3, 3] = float("nan")
    assert rows_finite([a, b]).tolist() == [False, True, False]
    t.check_gradients([a, b], 4)
    assert t.fail_at.tolist() == [[0, 4], [-1, -1], [0, 4]]


def test_batch_equals_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    errs = torch.rand(6, 3, generator=g)
    states = torch.randn(6, 3, 4, generator=g)
    both = BestIterate(3, "cpu")
    both.begin_stage({"v": torch.zeros(3, 4)})
    alone = [BestIterate(1, "cpu") for _ in range(3)]
    for a in alone:
        a.begin_stage({"v": torch.zeros(1, 4)})
    for i in range(6):
        both.update(states[i, :, :1, None].expand(3, 3, 2, 2), errs[i], errs[i], {"v": states[i]}, ["v"], i)
        for b, a in enumerate(alone):
            a.update(states[i, b : b + 1, :1, None].expand(1, 3, 2, 2), errs[i, b : b + 1], errs[i, b : b + 1],
                     {"v": states[i, b : b + 1]}, ["v"], i)
    for b, a in enumerate(alone):
        assert torch.equal(both.records[0]["state"]["v"][b], a.records[0]["state"]["v"][0])
        assert torch.equal(both.records[0]["loss"][b : b + 1], a.records[0]["loss"])


def test_replace_rewrites_a_record_where_finite_and_compute_picks_over_stages() -> None:
    t = BestIterate(2, "cpu")
    t.begin_stage({"v": torch.zeros(2, 4)})
    _step(t, [0.5, 0.5], 1.0, 0)
    t.begin_stage({"v": torch.zeros(2, 4)})
    _step(t, [0.1, 0.1], 2.0, 0)
    new_state = {"v": torch.full((2, 4), 3.0)}
    new_image = torch.full((2, 3, 2, 2), 3.0)
    t.replace(1, new_state, new_image, torch.tensor([0.9, math.nan]), render=lambda s: None)
    rec = t.records[1]
    assert rec["loss"].tolist() == [pytest.approx(0.9), pytest.approx(0.1)]
    assert rec["state"]["v"][:, 0].tolist() == [3.0, 2.0] and rec["image"][:, 0, 0, 0].tolist() == [3.0, 2.0]
    batch = ProblemBatch(ids=["a", "b"], observation=torch.zeros(2, 3, 2, 2), operator=None, seeds=[0, 1])
    res = t.compute(batch, splits=[0, 1], render=lambda s, k: None)
    assert [s.stage for s in res.solutions] == [0, 1]  # sample 0: the rewrite (0.9) lost to stage 0 (0.5)
    assert res.images[:, 0, 0, 0].tolist() == [1.0, 2.0] and res.failed == [None, None]


def test_a_stage_without_finite_iterate_returns_its_rendered_start() -> None:
    t = BestIterate(1, "cpu")
    t.begin_stage({"v": torch.full((1, 4), 7.0)})
    _step_nan = t.update(torch.zeros(1, 3, 2, 2), torch.tensor([math.nan]), torch.tensor([math.nan]), {"v": torch.zeros(1, 4)}, ["v"], 0)
    assert _step_nan is False
    batch = ProblemBatch(ids=["a"], observation=torch.zeros(1, 3, 2, 2), operator=None, seeds=[0])
    res = t.compute(batch, splits=[0], render=lambda s, k: s["v"][:, :3, None, None].expand(1, 3, 2, 2))
    assert res.images.unique().tolist() == [7.0] and "no finite iterate" in res.failed[0]


def test_copy_rows_and_bad_selection() -> None:
    for host_read in (True, False):
        dst, src = torch.zeros(3, 2), torch.ones(3, 2)
        copy_rows_(dst, src, torch.tensor([True, False, True]), host_read)
        assert dst[:, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="selection must be 'best' or 'last'"):
        BestIterate(1, "cpu", selection="median")
