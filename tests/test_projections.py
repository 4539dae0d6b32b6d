"""Tests of ilo_pl.projections: exact l1-ball projection (every ``impl`` against the sort reference),
in-place wrappers, sphere."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, List, Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ilo_pl.callbacks.projection import L1BallProjection
from ilo_pl.ops import _cpu
from ilo_pl.ops._cpu import l1_projection_kernel
from ilo_pl.projections import (
    L1_IMPLS,
    SAMPLE_SIZE,
    L1Workspace,
    _l1_threshold,
    _theta_sort,
    l1_impl_for,
    project_l1_ball,
    project_l1_ball_,
    project_l1_ball_sort,
    project_sphere_,
)

#: The implementations that compute (``"auto"`` is one of them).
IMPLS = ["newton", "sort", "kernel"]


def _kernel_or_skip():
    op = l1_projection_kernel()
    if op is None:
        pytest.skip("the CPU projection kernel cannot be built here (see test_cpu_kernel_builds_with_a_compiler)")
    return op


def _runnable(impl: str, device: str = "cpu") -> str:
    """``impl``, skipping the test where it cannot run (the kernel off the CPU or unbuilt)."""
    if impl == "kernel":
        if device != "cpu":
            pytest.skip("impl='kernel' is the CPU kernel")
        _kernel_or_skip()
    return impl


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    """Each implementation of :func:`project_l1_ball` (on the CPU)."""
    return _runnable(request.param)


@pytest.fixture(params=["reference", "auto", *IMPLS])
def method(request) -> Callable[..., torch.Tensor]:
    """:func:`project_l1_ball` with each ``impl``, and the sort reference :func:`project_l1_ball_sort`."""
    if request.param == "reference":
        return project_l1_ball_sort
    return functools.partial(project_l1_ball, impl=_runnable(request.param))


class InPlace:
    """:func:`project_l1_ball_` with one ``impl`` and workspaces of one ``host_reads`` setting."""

    def __init__(self, impl: str, host_reads: bool) -> None:
        self.impl, self.host_reads = impl, host_reads

    def workspace(self) -> L1Workspace:
        return L1Workspace(host_reads=self.host_reads)

    def __call__(self, param, anchor, radius, ws: Optional[L1Workspace] = None) -> None:  # noqa: ANN001
        project_l1_ball_(param, anchor, radius, ws if ws is not None else self.workspace(), impl=self.impl)


@pytest.fixture(
    params=[("kernel", True), ("newton", True), ("sort", True), ("sort", False)],
    ids=["kernel", "newton", "sort", "sort-no-reads"],
)
def inplace_path(request) -> InPlace:
    """Runs a test of :func:`project_l1_ball_` with every ``impl``, and the sort without host reads
    (``L1Workspace(host_reads=False)``, what accelerators use)."""
    impl, host_reads = request.param
    return InPlace(_runnable(impl), host_reads)


def brute_force_l1(v: torch.Tensor, r: float) -> torch.Tensor:
    """Projection of one short float64 vector by enumerating every face of the l1 ball.

    The projection lies in the relative interior of some face: a support ``S``
    and signs ``s`` on it, where it is the projection of ``v`` onto the affine
    set ``{w_S . s = r, w_{not S} = 0}``. Enumerate all (S, s), keep candidates
    whose signs agree, take the closest. Independent of the threshold formula.
    """
    x = v.tolist()
    if sum(abs(a) for a in x) <= r:
        return v.clone()
    n = len(x)
    best, best_d = [0.0] * n, sum(a * a for a in x)  # the origin is feasible
    for k in range(1, n + 1):
        for idx in itertools.combinations(range(n), k):
            for signs in itertools.product((-1.0, 1.0), repeat=k):
                lam = (sum(x[i] * s for i, s in zip(idx, signs)) - r) / k
                w = [0.0] * n
                for i, s in zip(idx, signs):
                    w[i] = x[i] - lam * s
                if any(w[i] * s < -1e-12 for i, s in zip(idx, signs)):
                    continue
                d = sum((a - b) ** 2 for a, b in zip(w, x))
                if d < best_d - 1e-15:
                    best, best_d = w, d
    return torch.tensor(best, dtype=v.dtype)


def _kkt_theta(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-row threshold implied by a projection, checking it has the soft-threshold form."""
    active = w != 0
    gaps = torch.where(active, v.abs() - w.abs(), torch.nan)
    theta = torch.nanmean(gaps, dim=1)
    return theta


# ---------------------------------------------------------------- exactness


def test_matches_brute_force_on_small_vectors(method):
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = 1 + trial % 6
        v = torch.randn(1, n, generator=g, dtype=torch.float64) * 3
        norm = float(v.abs().sum())
        for r in (0.05 * norm, 0.5 * norm, 0.95 * norm, 2 * norm):
            got = method(v, r)[0]
            want = brute_force_l1(v[0], r)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_brute_force_with_ties_and_zeros(method):
    cases = [
        [3.0, 3.0, -3.0, 1.0, 1.0],
        [2.0, -2.0, 2.0, -2.0],
        [0.0, 0.0, 5.0, -1.0, 0.0, 1.0],
        [1.0, 1.0, 1.0, 0.0],
    ]
    for vals in cases:
        v = torch.tensor([vals], dtype=torch.float64)
        for r in (0.5, 1.0, 2.0, 3.0, 7.5):
            got = method(v, r)[0]
            torch.testing.assert_close(got, brute_force_l1(v[0], r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kkt_conditions(dtype, impl):
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(8, 1, generator=g, dtype=torch.float64) * 5
    v = (torch.randn(8, 1000, generator=g, dtype=torch.float64) * scale).to(dtype)
    r = v.abs().sum(1).double() * torch.tensor([1e-4, 1e-3, 0.01, 0.1, 0.3, 0.6, 0.9, 0.999], dtype=torch.float64)
    w = project_l1_ball(v, r.to(dtype), impl=impl)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    vd, wd = v.double(), w.double()
    # same signs (or zero), ||w||_1 == r, a single threshold theta >= 0 on the support
    assert ((vd * wd) >= 0).all()
    torch.testing.assert_close(wd.abs().sum(1), r, rtol=tol, atol=0)
    theta = _kkt_theta(vd, wd)
    assert (theta >= 0).all()
    scale = vd.abs().amax(1, keepdim=True)
    gaps = vd.abs() - wd.abs()
    assert (torch.where(wd != 0, (gaps - theta[:, None]).abs(), 0) <= tol * scale).all()
    # every dropped entry is below the threshold
    assert (torch.where(wd == 0, vd.abs() - theta[:, None], -1) <= tol * scale).all()


def test_inside_rows_unchanged_bit_identical_and_new_tensor(method):
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 300, generator=g)
    norms = v.abs().sum(1)
    r = torch.stack([norms[0] * 2, norms[1], norms[2] * 0.5, torch.tensor(math.inf)])
    w = method(v, r)
    assert torch.equal(w[[0, 1, 3]], v[[0, 1, 3]])
    assert not torch.equal(w[2], v[2])
    assert w.data_ptr() != v.data_ptr()
    # all inside: the early-out still returns a copy
    w = method(v, norms * 3)
    assert torch.equal(w, v) and w.data_ptr() != v.data_ptr()


def test_radius_zero_and_inf(method):
    v = torch.randn(3, 50, dtype=torch.float64)
    assert torch.equal(method(v, 0.0), torch.zeros_like(v))
    assert torch.equal(method(v, math.inf), v)
    w = method(v, torch.tensor([0.0, math.inf, 1.0], dtype=torch.float64))
    assert torch.equal(w[0], torch.zeros(50, dtype=torch.float64))
    assert torch.equal(w[1], v[1])
    assert math.isclose(float(w[2].abs().sum()), 1.0, rel_tol=1e-12)


def test_all_zero_row_and_radius_zero(method):
    v = torch.zeros(2, 10)
    assert torch.equal(method(v, 0.0), v)
    assert torch.equal(method(v, 1.0), v)


def test_batch_equals_per_sample_with_per_sample_radii(impl):
    g = torch.Generator().manual_seed(3)
    scale = torch.logspace(-2, 2, 6, dtype=torch.float64)[:, None]
    v = torch.randn(6, 2000, generator=g, dtype=torch.float64) * scale
    r = v.abs().sum(1) * torch.tensor([0.001, 0.05, 0.5, 0.99, 1.5, 0.0], dtype=torch.float64)
    w = project_l1_ball(v, r, impl=impl)
    for b in range(6):
        one = project_l1_ball(v[b : b + 1], r[b : b + 1], impl=impl)
        torch.testing.assert_close(w[b : b + 1], one, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("dist", ["gauss", "uniform", "cauchy", "sparse"])
def test_large_random_matches_sort_reference(device, dist, impl_name):
    impl = _runnable(impl_name, device)
    g = torch.Generator().manual_seed(4)
    n = 1 << 16
    if dist == "gauss":
        v = torch.randn(3, n, generator=g, dtype=torch.float64)
    elif dist == "uniform":
        v = torch.rand(3, n, generator=g, dtype=torch.float64)
    elif dist == "cauchy":
        v = torch.tan(math.pi * (torch.rand(3, n, generator=g, dtype=torch.float64) - 0.5))
    else:
        keep = torch.rand(3, n, generator=g, dtype=torch.float64) < 0.01
        v = torch.randn(3, n, generator=g, dtype=torch.float64) * keep
    v = v.to(device)
    r = v.abs().sum(1) * torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64, device=device)
    ref = project_l1_ball_sort(v, r)
    scale = ref.abs().amax(1, keepdim=True)
    # float64: agree to 1e-6 relative (in practice ~1e-13)
    w64 = project_l1_ball(v, r, impl=impl)
    assert w64.device == v.device
    assert ((w64 - ref).abs() <= 1e-6 * scale).all()
    # float32: no worse than float32 rounding of the inputs allows
    w32 = project_l1_ball(v.float(), r.float(), impl=impl)
    assert w32.dtype == torch.float32
    assert ((w32.double() - ref).abs() <= 1e-5 * scale).all()


@pytest.mark.parametrize(
    "u",
    [
        torch.pow(2.0, torch.arange(60, dtype=torch.float64)),
        torch.arange(50_000, dtype=torch.float64) ** 4,
        torch.arange(50_000, dtype=torch.float64),
        torch.randint(0, 5, (50_000,), generator=torch.Generator().manual_seed(5)).double(),
    ],
    ids=["geometric", "quartic", "linear", "few-values"],
)
def test_structured_vectors_match_sort_reference(u, impl):
    v = (u * torch.where(torch.arange(u.numel()) % 3 == 0, -1.0, 1.0).double())[None]
    for frac in (1e-9, 1e-3, 0.1, 0.5, 0.999999):
        r = frac * v.abs().sum(1)
        w, ref = project_l1_ball(v, r, impl=impl), project_l1_ball_sort(v, r)
        assert ((w - ref).abs() <= 1e-9 * ref.abs().amax()).all(), frac


class _SortWidths(TorchDispatchMode):
    """Records the row length of every ``aten.sort`` dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: List[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.overloadpacket is torch.ops.aten.sort:
            self.widths.append(args[0].shape[-1])
        return func(*args, **(kwargs or {}))


def test_typical_inputs_converge_without_the_sort_fallback():
    """Newton's search sorts only its strided start sample: the capped-iteration fallback (a sort of the
    remaining candidates) never runs on typical rows."""
    g = torch.Generator().manual_seed(11)
    v = torch.randn(4, 1 << 17, generator=g)
    r = v.abs().sum(1) * torch.tensor([1e-4, 0.01, 0.3, 0.9])
    with _SortWidths() as sorts:
        w = project_l1_ball(v, r, impl="newton")
    assert sorts.widths == [SAMPLE_SIZE], sorts.widths
    torch.testing.assert_close(w.abs().sum(1), r, rtol=1e-5, atol=0)


def test_sample_start_edge_cases():
    """The strided-sample starting point only saves steps: adversarial samples change nothing."""
    n = 1 << 14
    g = torch.Generator().manual_seed(12)
    # the sample (every 16th entry) sees only zeros
    off_stride = torch.zeros(1, n, dtype=torch.float64)
    off_stride[0, 1::16] = torch.rand(n // 16, generator=g, dtype=torch.float64) + 1
    # the sample holds the one huge entry and the radius is tiny: the guess is max(u)
    spike = torch.rand(1, n, generator=g, dtype=torch.float64)
    spike[0, 0] = 1e30
    # the sample overestimates the threshold (start right of the root)
    heavy_off = torch.rand(1, n, generator=g, dtype=torch.float64)
    heavy_off[0, ::16] *= 100
    for v, fracs in [(off_stride, (0.01, 0.5)), (spike, (1e-40, 1e-31, 0.5)), (heavy_off, (0.01, 0.3, 0.9))]:
        for frac in fracs:
            r = v.abs().sum(1) * frac
            w, ref = project_l1_ball(v, r), project_l1_ball_sort(v, r)
            assert ((w - ref).abs() <= 1e-12 * ref.abs().amax()).all(), frac
            # (with the spike, ||w||_1 is only known to 1e-16 * 1e30)
            torch.testing.assert_close(w.abs().sum(1), r, rtol=1e-10, atol=1e-15 * float(v.abs().max()))


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_capped_iterations_fall_back_exactly(max_iter):
    g = torch.Generator().manual_seed(6)
    u = torch.randn(5, 5000, generator=g, dtype=torch.float64).abs()
    r = u.sum(1) * torch.tensor([1e-4, 0.01, 0.2, 0.7, 0.95], dtype=torch.float64)
    todo = torch.ones(5, dtype=torch.bool)
    theta = _l1_threshold(u, r, todo, u.sum(1), max_iter=max_iter)
    torch.testing.assert_close(theta, _theta_sort(u, r), rtol=1e-12, atol=0)


def test_zero_iteration_cap_is_rejected():
    u = torch.rand(1, 10)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        _l1_threshold(u, torch.ones(1), torch.ones(1, dtype=torch.bool), u.sum(1), max_iter=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype, impl):
    """Half-precision rows match an independent float64 projection to the dtype's rounding, and are feasible."""
    g = torch.Generator().manual_seed(13)
    v = (torch.randn(3, 500, generator=g) * torch.tensor([[1.0], [4.0], [0.25]])).to(dtype)
    exact = v.double()  # the half values themselves, exactly
    # a few entries survive / about half do / a radius close to ||v||_1
    r = exact.abs().sum(1) * torch.tensor([0.01, 0.5, 0.95], dtype=torch.float64)
    w = project_l1_ball(v, r.to(torch.float32), impl=impl)
    assert w.dtype == dtype
    ref = project_l1_ball_sort(exact, r)  # Duchi et al.'s sort, in float64: not the code under test
    eps = torch.finfo(dtype).eps
    scale = exact.abs().amax(1, keepdim=True)
    # each entry is the float64 projection, rounded once to the dtype (plus float32 work)
    assert ((w.double() - ref).abs() <= eps * ref.abs() + 1e-6 * scale).all(), (w.double() - ref).abs().max()
    # feasible: on the ball's boundary, up to rounding each kept entry to the dtype
    l1 = w.double().abs().sum(1)
    assert (l1 <= r * (1 + eps)).all() and (l1 >= r * (1 - eps)).all(), (l1, r)
    # signs kept, nothing grows: a projection onto a ball centred at 0 shrinks towards it
    assert (w.double() * exact >= 0).all() and (w.double().abs() <= exact.abs()).all()
    # against the brute-force face enumeration on short rows
    short = v[:, :6]
    rs = short.double().abs().sum(1) * 0.4
    ws = project_l1_ball(short, rs.float(), impl=impl)
    for b in range(3):
        want = brute_force_l1(short[b].double(), float(rs[b]))
        assert ((ws[b].double() - want).abs() <= eps * want.abs() + 1e-6).all(), (ws[b], want)
    assert torch.equal(project_l1_ball(v, 1e4, impl=impl), v)  # inside: unchanged, bit for bit


def test_empty_inputs(method):
    assert method(torch.zeros(0, 5), 1.0).shape == (0, 5)
    assert method(torch.zeros(3, 0), 1.0).shape == (3, 0)


# ---------------------------------------------------------------- projection properties


def test_projection_properties(method):
    """Idempotent, non-expansive, and the variational inequality of a projection onto a convex set."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 400, generator=g, dtype=torch.float64) * 2
    y = torch.randn(16, 400, generator=g, dtype=torch.float64) * 2
    r = 5.0
    px, py = method(x, r), method(y, r)
    torch.testing.assert_close(method(px, r), px, rtol=0, atol=1e-12)
    assert ((px - py).norm(dim=1) <= (x - y).norm(dim=1) + 1e-12).all()
    # <x - Px, z - Px> <= 0 for any z in the ball (here: random points of the ball)
    z = method(torch.randn(16, 400, generator=g, dtype=torch.float64), r)
    assert (((x - px) * (z - px)).sum(1) <= 1e-9).all()


@pytest.mark.parametrize("impl", ["auto", "newton", "sort"])
def test_gradcheck_float64_and_matches_sort_gradient(impl):
    g = torch.Generator().manual_seed(8)
    v = torch.randn(3, 40, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.tensor([1.0, 4.0, 1e3], dtype=torch.float64, requires_grad=True)
    fn = functools.partial(project_l1_ball, impl=impl)
    assert torch.autograd.gradcheck(fn, (v, r))
    weights = torch.randn(3, 40, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((fn(v, r) * weights).sum(), (v, r))
    gb = torch.autograd.grad((project_l1_ball_sort(v, r) * weights).sum(), (v, r))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_kernel_impl_is_not_differentiable_and_says_so():
    v = torch.randn(2, 10, requires_grad=True)
    with pytest.raises(ValueError, match="impl='kernel' is not differentiable"):
        project_l1_ball(v, 1.0, impl="kernel")
    with pytest.raises(ValueError, match="impl='kernel' is not differentiable"):
        project_l1_ball(v.detach(), torch.ones(2, requires_grad=True), impl="kernel")
    _kernel_or_skip()
    with torch.no_grad():  # no graph asked for: fine
        w = project_l1_ball(v, 1.0, impl="kernel")
    torch.testing.assert_close(w, project_l1_ball_sort(v.detach(), 1.0))


# ---------------------------------------------------------------- errors


def test_bad_shapes_and_dtypes(method):
    with pytest.raises(ValueError, match=r"expects a \[B, n\] tensor; got shape \(5,\)"):
        method(torch.randn(5), 1.0)
    with pytest.raises(ValueError, match=r"expects a \[B, n\] tensor.*reshape"):
        method(torch.randn(2, 3, 4), 1.0)
    with pytest.raises(TypeError, match="floating-point tensor; got torch.int64"):
        method(torch.ones(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        method([[1.0, 2.0]], 1.0)


def test_bad_radius(method):
    v = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"must be >= 0 \(use inf for no constraint\)"):
        method(v, -1.0)
    with pytest.raises(ValueError, match=r"must be >= 0"):
        method(v, torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match=r"radius must be a scalar or have shape \[2\]; got \(3,\)"):
        method(v, torch.ones(3))
    with pytest.raises(TypeError, match="radius must be a number or a tensor"):
        method(v, "1.0")


def test_non_finite_rows_raise(impl):
    v = torch.randn(3, 4)
    v[1, 2] = math.inf
    with pytest.raises(ValueError, match=r"rows \[1\] .* inf/NaN"):
        project_l1_ball(v, 1.0, impl=impl)
    v[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"rows \[1\] .* inf/NaN"):
        project_l1_ball(v, 1.0, impl=impl)
    # with no constraint (inf radius) there is nothing to project
    w = project_l1_ball(v, math.inf, impl=impl)
    assert torch.equal(torch.isnan(w), torch.isnan(v))
    assert torch.equal(torch.nan_to_num(w), torch.nan_to_num(v))


# ---------------------------------------------------------------- in place, around an anchor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_l1_ball_inplace_around_anchor(dtype, inplace_path):
    g = torch.Generator().manual_seed(9)
    anchor = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
    param = anchor + torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
    before = param.clone()
    dev_norm = (before - anchor).abs().flatten(1).sum(1)
    radius = dev_norm * torch.tensor([0.1, 0.5, 2.0, 0.0], dtype=dtype)
    inplace_path(param, anchor, radius)
    after = (param - anchor).abs().flatten(1).sum(1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(after[:2], radius[:2], rtol=tol, atol=tol)
    assert torch.equal(param[2], before[2])  # inside: untouched
    assert torch.equal(param[3], anchor[3])  # radius 0: back to the anchor
    want = anchor + project_l1_ball((before - anchor).flatten(1), radius).view_as(anchor)
    torch.testing.assert_close(param, want)


def test_inplace_leaves_inside_samples_bit_identical_despite_rounding(inplace_path):
    # (p - a) + a != p in float32 here, so writing every sample back would move it.
    anchor = torch.tensor([[1.0, 1.0]])
    param = torch.tensor([[1e-8, 3e-8]])
    assert not torch.equal((param - anchor) + anchor, param)
    before = param.clone()
    inplace_path(param, anchor, 10.0)
    assert torch.equal(param, before)
    # and a batch where only the other sample moves
    anchor2 = torch.cat([anchor, torch.zeros(1, 2)])
    param2 = torch.cat([param, torch.tensor([[5.0, -5.0]])])
    before2 = param2.clone()
    inplace_path(param2, anchor2, torch.tensor([10.0, 1.0]))
    assert torch.equal(param2[0], before2[0])
    torch.testing.assert_close(param2[1], torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize("impl", ["auto", "newton", "sort"])
def test_inplace_half_param_and_errors(impl):
    anchor = torch.zeros(2, 100, dtype=torch.float16)
    param = torch.randn(2, 100).to(torch.float16)
    project_l1_ball_(param, anchor, 1.0, impl=impl)
    assert param.dtype == torch.float16
    assert (param.float().abs().sum(1) <= 1.0 + 1e-2).all()
    with pytest.raises(ValueError, match=r"parameter \(2, 3\) and anchor \(2, 4\) shapes differ"):
        project_l1_ball_(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="got a scalar"):
        project_l1_ball_(torch.tensor(1.0), torch.tensor(0.0), 1.0)
    with pytest.raises(TypeError, match="floating-point param"):
        project_l1_ball_(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"radius must be a scalar or have shape \[2\]"):
        project_l1_ball_(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(4))


def test_workspace_warm_start_is_exact_along_a_drifting_trajectory(inplace_path):
    """Carrying a workspace (buffers + last thresholds) across steps changes no result."""
    g = torch.Generator().manual_seed(21)
    anchor = torch.randn(5, 4, 32, 32, generator=g, dtype=torch.float64)
    dev = torch.randn(5, 4, 32, 32, generator=g, dtype=torch.float64)
    radius = torch.tensor([5.0, 50.0, 400.0, 1e5, 0.0], dtype=torch.float64)  # row 3 inside
    ws, param = inplace_path.workspace(), anchor + dev
    for step in range(8):
        # an optimizer-like step: small moves, and once a big jump (the guess is then far off)
        param += torch.randn(param.shape, generator=g, dtype=torch.float64) * (3.0 if step == 4 else 1e-3)
        cold, warm = param.clone(), param.clone()
        inplace_path(cold, anchor, radius)
        inplace_path(warm, anchor, radius, ws)
        torch.testing.assert_close(warm, cold, rtol=0, atol=1e-12)
        ref = anchor + project_l1_ball_sort((param - anchor).flatten(1), radius).view_as(anchor)
        torch.testing.assert_close(warm, ref, rtol=0, atol=1e-12)
        assert torch.equal(warm[4], anchor[4])  # radius 0: exactly the anchor
        param = warm


@pytest.mark.parametrize("guess", [0.0, 1e-9, 0.7, 1e6, float("inf")])
def test_workspace_with_any_stale_guess_is_exact(guess, inplace_path):
    g = torch.Generator().manual_seed(22)
    anchor = torch.zeros(3, 5000, dtype=torch.float64)
    param = torch.randn(3, 5000, generator=g, dtype=torch.float64)
    r = param.abs().sum(1) * torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    ws = inplace_path.workspace()
    ws.buffers((3, 5000), torch.float64, param.device)
    ws.theta = torch.full((3,), guess, dtype=torch.float64)
    want = project_l1_ball_sort(param, r)
    inplace_path(param, anchor, r, ws)
    torch.testing.assert_close(param, want, rtol=0, atol=1e-12)


def test_workspace_reuses_buffers_and_resets_on_new_shapes():
    ws = L1Workspace()
    a = ws.buffers((2, 10), torch.float32, torch.device("cpu"))
    ws.theta = torch.ones(2)
    assert all(x.data_ptr() == y.data_ptr() for x, y in zip(a, ws.buffers((2, 10), torch.float32, torch.device("cpu"))))
    assert ws.theta is not None
    b = ws.buffers((3, 10), torch.float32, torch.device("cpu"))
    assert b[0].shape == (3, 10) and ws.theta is None  # another variable: no warm start from the old one
    ws.buffers((3, 10), torch.float64, torch.device("cpu"))
    assert ws.theta is None
    # asking for more buffers of the same kind adds them and keeps the warm start
    one = ws.buffers((3, 10), torch.float64, torch.device("cpu"), count=1)
    ws.theta = torch.ones(3)
    three = ws.buffers((3, 10), torch.float64, torch.device("cpu"), count=3)
    assert len(one) == 1 and len(three) == 3 and three[0].data_ptr() == one[0].data_ptr()
    assert ws.theta is not None


# ---------------------------------------------------------------- sphere


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_sphere_norm_and_direction(dtype):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 2, 16, 16, generator=g, dtype=dtype) * 7
    before = x.clone()
    project_sphere_(x, (1, 2, 3))
    norms = x.flatten(1).norm(dim=1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(norms, torch.full((3,), math.sqrt(512), dtype=dtype), rtol=tol, atol=0)
    torch.testing.assert_close(
        x.flatten(1) / norms[:, None],
        before.flatten(1) / before.flatten(1).norm(dim=1, keepdim=True),
        rtol=tol,
        atol=tol,
    )
    # per-row sphere of a [B, L, D] latent (dims=-1), and a zero slice stays zero
    w = torch.randn(2, 3, 512, generator=g, dtype=dtype)
    w[1, 2] = 0
    project_sphere_(w, [-1])
    torch.testing.assert_close(w[0].norm(dim=-1), torch.full((3,), math.sqrt(512), dtype=dtype), rtol=tol, atol=0)
    assert torch.equal(w[1, 2], torch.zeros(512, dtype=dtype))


def test_project_sphere_errors():
    with pytest.raises(ValueError, match="at least one dim"):
        project_sphere_(torch.randn(2, 3), ())
    with pytest.raises(ValueError, match=r"dims \(2,\) out of range for a 2-D tensor"):
        project_sphere_(torch.randn(2, 3), (2,))
    with pytest.raises(ValueError, match="repeat a dim"):
        project_sphere_(torch.randn(2, 3), (1, -1))
    with pytest.raises(TypeError, match="floating-point tensor"):
        project_sphere_(torch.ones(2, 3, dtype=torch.long), (1,))


# ---------------------------------------------------------------- benchmark script


def test_benchmark_script_smoke(tmp_path):
    """benchmarks/projection.py runs end to end on a tiny size and writes its CSV."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "projection.py"
    spec = importlib.util.spec_from_file_location("projection_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.SIZES, bench.QUICK_SIZES = [2048], [2048]
    out = tmp_path / "p.csv"
    assert bench.main(["--quick", "--repeats", "1", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert {r["batch"] for r in rows} == {"1", "16"}
    assert all(float(r["speedup"]) > 0 and float(r["max_rel_err"]) < 1e-5 for r in rows)


# ---------------------------------------------------------------- the compiled CPU kernel


def test_cpu_kernel_builds_with_a_compiler():
    """Where a C++ compiler and ninja exist, the kernel must build (else CPU runs silently lose ~10x)."""
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the pure-PyTorch projection is used")
    assert l1_projection_kernel() is not None  # whatever ILO_PL_OPS says: it only steers impl="auto"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 16, 17, 2047, 2048, 2049, 70001])
@pytest.mark.parametrize("guess_factor", [None, 0.0, 0.3, 0.9, 1.0, 1.2, 1.34, 2.0, 1e3])
def test_kernel_matches_sort_reference_for_any_size_and_guess(dtype, n, guess_factor):
    """Sizes around the SIMD width and the summation block; guesses below, at and above the threshold.

    A guess above 4/3 of the threshold puts the packing cut-off above it (a
    re-pack); 1e3 leaves no entry above the guess at all.
    """
    _kernel_or_skip()
    g = torch.Generator().manual_seed(n)
    anchor = torch.randn(4, n, generator=g, dtype=dtype)
    dev = torch.randn(4, n, generator=g, dtype=dtype) * torch.tensor([1.0, 1e-3, 50.0, 1.0], dtype=dtype)[:, None]
    radius = dev.abs().sum(1) * torch.tensor([0.02, 0.5, 0.9, 0.999], dtype=dtype)
    want = anchor + project_l1_ball_sort(dev, radius)
    ws = L1Workspace()
    if guess_factor is not None:
        probe = anchor + dev
        project_l1_ball_(probe, anchor, radius, ws, impl="newton")  # the exact thresholds, from Newton in PyTorch
        ws.theta = ws.theta.double() * guess_factor
    param = anchor + dev
    project_l1_ball_(param, anchor, radius, ws, impl="kernel")
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6 * float(dev.abs().max()))
    torch.testing.assert_close(param, want, **tol)
    # the thresholds it keeps are exact too (they start the next step)
    theta = _theta_sort(dev.double().abs(), radius.double())  # of the same data, in float64
    scale = (1e-7 if dtype == torch.float32 else 1e-14) * float(dev.abs().amax())  # cancellation in sum - r
    torch.testing.assert_close(ws.theta.double(), theta, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=scale)


@pytest.mark.parametrize("other", ["newton", "sort"])
def test_kernel_equals_the_pytorch_impls_on_a_batch_and_per_sample(other):
    _kernel_or_skip()
    g = torch.Generator().manual_seed(3)
    anchor = torch.randn(6, 3, 40, 40, generator=g, dtype=torch.float64)
    param = anchor + torch.randn(6, 3, 40, 40, generator=g, dtype=torch.float64)
    radius = torch.tensor([1.0, 100.0, 1e4, math.inf, 0.0, 2000.0], dtype=torch.float64)
    kernel = param.clone()
    project_l1_ball_(kernel, anchor, radius, impl="kernel")
    for i in range(6):  # batch equals per sample
        one = param[i : i + 1].clone()
        project_l1_ball_(one, anchor[i : i + 1], radius[i : i + 1], impl="kernel")
        assert torch.equal(one, kernel[i : i + 1])
    native = param.clone()
    project_l1_ball_(native, anchor, radius, impl=other)
    torch.testing.assert_close(kernel, native, rtol=0, atol=1e-12)
    assert torch.equal(kernel[3], param[3]) and torch.equal(kernel[4], anchor[4])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_kernel_non_finite_row_raises_and_writes_nothing(bad):
    _kernel_or_skip()
    anchor = torch.zeros(3, 100)
    param = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    param[2, 5] = bad
    before = param.clone()
    with pytest.raises(ValueError, match=r"rows \[2\] .* inf/NaN"):
        project_l1_ball_(param, anchor, 1.0)
    assert torch.equal(torch.nan_to_num(param), torch.nan_to_num(before))  # row 0 and 1 were outside, yet untouched
    project_l1_ball_(param, anchor, torch.tensor([1.0, 1.0, math.inf]))  # no constraint on the bad row: fine
    assert torch.equal(torch.nan_to_num(param[2]), torch.nan_to_num(before[2]))
    torch.testing.assert_close(param[:2].abs().sum(1), torch.ones(2))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_no_reads_path_leaves_a_non_finite_row_as_it_is(bad):
    """Without host reads nothing can raise: the bad row stays as it was, the others are projected."""
    anchor = torch.zeros(3, 100)
    param = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    param[2, 5] = bad
    before = param.clone()
    project_l1_ball_(param, anchor, 1.0, L1Workspace(host_reads=False))
    assert torch.equal(torch.nan_to_num(param[2]), torch.nan_to_num(before[2]))
    assert torch.isnan(param[2, 5]) if math.isnan(bad) else param[2, 5] == bad
    torch.testing.assert_close(param[:2], project_l1_ball_sort(before[:2], 1.0))


def test_kernel_rejects_what_it_does_not_handle():
    op = _kernel_or_skip()
    x = torch.zeros(2, 8)
    r = torch.ones(2, dtype=torch.float64)
    th = torch.full((2,), math.nan, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(torch.zeros(8, 2).t(), x, r, th, x.clone())
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(x.half(), x.half(), r, th, x.half())
    with pytest.raises(RuntimeError, match="radius must be"):
        op(x, x, r.float(), th, x.clone())
    # impl="auto" routes such tensors to Newton in PyTorch; an explicit impl="kernel" refuses them
    param = torch.randn(8, 2).t()  # not contiguous
    assert l1_impl_for(param) == "newton"
    with pytest.raises(ValueError, match="impl='kernel' cannot run here: it needs a contiguous tensor"):
        project_l1_ball_(param, torch.zeros(2, 8), 0.5, impl="kernel")
    project_l1_ball_(param, torch.zeros(2, 8), 0.5)
    torch.testing.assert_close(param.abs().sum(1), torch.full((2,), 0.5))


def test_kernel_build_failure_falls_back_with_one_warning(monkeypatch, caplog, tmp_path):
    import logging

    import torch.utils.cpp_extension as cpp

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error building extension 'ilo_pl_cpu_ops'")

    monkeypatch.setattr(cpp, "load", broken_load)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: a finished build would just load
    monkeypatch.delenv("ILO_PL_OPS", raising=False)
    saved = _cpu.BUILD.state()
    _cpu.BUILD.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="ilo_pl.ops._cpu"):
            assert l1_projection_kernel() is None
            param = torch.randn(2, 50)
            assert l1_impl_for(param) == "newton"
            project_l1_ball_(param, torch.zeros(2, 50), 1.0)  # impl="auto" still projects, in PyTorch
            assert l1_projection_kernel() is None
            # an explicit impl="kernel" raises, naming the build error, instead of falling back
            with pytest.raises(RuntimeError, match=r"could not be built \(RuntimeError: Error building extension"):
                project_l1_ball_(param, torch.zeros(2, 50), 1.0, impl="kernel")
        warnings = [r for r in caplog.records if r.name == "ilo_pl.ops._cpu" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Error building extension" in warnings[0].getMessage()
        torch.testing.assert_close(param.abs().sum(1), torch.ones(2))
    finally:
        _cpu.BUILD.restore(saved)


def test_native_env_makes_auto_skip_the_kernel_and_its_build(monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("ILO_PL_OPS", "native")
    monkeypatch.setattr(cpp, "load", lambda *a, **k: pytest.fail("ILO_PL_OPS=native: auto must not build the kernel"))
    saved = _cpu.BUILD.state()
    _cpu.BUILD.reset()
    try:
        param = torch.randn(2, 50)
        assert l1_impl_for(param) == "newton"
        project_l1_ball_(param, torch.zeros(2, 50), 1.0)
        torch.testing.assert_close(param.abs().sum(1), torch.ones(2))
    finally:
        _cpu.BUILD.restore(saved)


def test_native_env_leaves_an_explicit_kernel_impl_alone(monkeypatch):
    _kernel_or_skip()
    monkeypatch.setenv("ILO_PL_OPS", "native")
    param = torch.randn(3, 500, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = project_l1_ball_sort(param, 2.0)
    assert l1_impl_for(param, "kernel") == "kernel"
    project_l1_ball_(param, torch.zeros_like(param), 2.0, impl="kernel")
    torch.testing.assert_close(param, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- choosing the implementation


def test_impls_are_the_documented_ones():
    assert L1_IMPLS == ("auto", "kernel", "newton", "sort")


def test_auto_picks_sort_without_host_reads_then_the_kernel_then_newton():
    x = torch.zeros(2, 3)
    assert l1_impl_for(x, host_reads=False) == "sort"
    assert l1_impl_for(x) == ("kernel" if l1_projection_kernel() is not None else "newton")
    assert l1_impl_for(x.half()) == "newton"
    assert l1_impl_for(torch.zeros(3, 2).t()) == "newton"  # not contiguous
    assert l1_impl_for(torch.zeros(2, 3, device="meta")) == "newton"  # not on the CPU
    for impl in ("newton", "sort"):  # explicit: returned as they are
        assert l1_impl_for(x, impl) == impl


def test_an_explicit_impl_that_cannot_run_raises():
    choices = r"impl must be one of 'auto', 'kernel', 'newton', 'sort'; got 'native'"
    with pytest.raises(ValueError, match=r"project_l1_ball_: " + choices):
        project_l1_ball_(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, impl="native")
    with pytest.raises(ValueError, match=r"project_l1_ball: " + choices):
        project_l1_ball(torch.zeros(2, 3), 1.0, impl="native")
    with pytest.raises(ValueError, match=r"L1BallProjection: " + choices):
        L1BallProjection(impl="native")
    with pytest.raises(ValueError, match=r"impl='kernel' cannot run here: it handles float32 and float64; got torch.float16"):
        project_l1_ball_(torch.ones(2, 3, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.float16), 1.0, impl="kernel")
    with pytest.raises(ValueError, match=r"impl='kernel' cannot run here: it runs on CPU tensors; got a meta tensor"):
        project_l1_ball_(torch.ones(2, 3, device="meta"), torch.zeros(2, 3, device="meta"), 1.0, impl="kernel")
    for impl in ("kernel", "newton"):  # both read on the host
        with pytest.raises(ValueError, match=rf"impl='{impl}' reads values on the host .* host_reads=False; use impl='sort'"):
            project_l1_ball_(torch.ones(2, 3), torch.zeros(2, 3), 1.0, L1Workspace(host_reads=False), impl=impl)


@pytest.mark.gpu
def test_kernel_impl_refuses_cuda_tensors():
    p = torch.ones(2, 3, device="cuda")
    with pytest.raises(ValueError, match="it runs on CPU tensors; got a cuda tensor"):
        project_l1_ball_(p, torch.zeros_like(p), 1.0, impl="kernel")
    with pytest.raises(ValueError, match="it runs on CPU tensors; got a cuda tensor"):
        project_l1_ball(p, 1.0, impl="kernel")
