"""The final consistency step (``consistency: project | prox``): exactness, formulas, batching, refusals, files."""

from __future__ import annotations

import math

import pytest
import torch

from ilo_pl.api import solve
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.modules import ILOModule
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import (
    BicubicDownsample,
    Compose,
    GaussianMatrix,
    GaussianNoise,
    GaussianNoiseModel,
    Identity,
    Inpainting,
    LambdaOperator,
    LinearCompose,
    LinearOperator,
    NoiseModel,
    PartialCirculant,
    RandomMask,
)
from ilo_pl.operators.consistency import (
    check_operator,
    clipped_moments,
    conjugate_gradient,
    consistency_step,
    gram_diagonal,
    gram_trace,
    has_adjoint,
    least_norm_correction,
    prior_variance,
)
from ilo_pl.solutions import FORMAT_CORRECTED, load_solution, regenerate
from ilo_pl.stages import Stage

F64 = torch.float64
SHAPE = (3, 16, 16)


def _images(b: int, seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


def _operators():
    """One noiseless operator of each kind (two problems each; per-problem buffers where the kind has them)."""
    masks = Inpainting.stack([RandomMask(0.2).build(SHAPE, s) for s in (1, 2)])
    return {
        "inpainting": masks,
        "superres_x4": BicubicDownsample(4),
        "cs_circulant": PartialCirculant.stack([PartialCirculant(SHAPE, 77, seed=s) for s in (3, 4)]),
        "cs_gaussian": GaussianMatrix(SHAPE, 100, seed=5),
        "inpainting_composed": Compose(masks, GaussianNoise(0.0)),
    }


@pytest.mark.parametrize("name", list(_operators()))
def test_project_explains_the_observation_exactly(name):
    """Noiseless: A x == y to the solver's tolerance, and x - G is the least-norm such correction."""
    op = _operators()[name]
    truth, g = _images(2, 0), _images(2, 1)
    y = op.A(truth)
    step = consistency_step(op, g, y, "project")
    rel = (op.A(step.image) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    assert rel.max() < 1e-8, rel
    assert step.residual.max() < 1e-8
    # Least norm: the correction lies in the row space of A, i.e. A^T w for some w (A^+ A d == d).
    d = step.correction
    again = least_norm_correction(op, op.A(d))
    torch.testing.assert_close(again, d, rtol=0, atol=1e-8)
    if "inpainting" in name:  # exactly pasting the observed pixels
        m = op.mask if name == "inpainting" else op.ops[0].mask
        torch.testing.assert_close(step.image, truth * m + g * (1 - m), rtol=0, atol=1e-15)


def test_project_matches_the_dense_pseudo_inverse():
    op = PartialCirculant((3, 8, 8), 50, seed=2)
    g, truth = _images(1, 3, (3, 8, 8)), _images(1, 4, (3, 8, 8))
    y = op.A(truth)
    a = op.dense()[0]
    want = g.flatten(1) + (torch.linalg.pinv(a) @ (y - op.A(g)).T).T
    got = consistency_step(op, g, y, "project").image.flatten(1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def _dense_prox(a: torch.Tensor, g: torch.Tensor, y: torch.Tensor, sigma: float, tau: float) -> torch.Tensor:
    """argmin ||x - g||^2 / (2 tau^2) + ||A x - y||^2 / (2 sigma^2), by a dense solve of the normal equations."""
    n = a.shape[1]
    lhs = a.T @ a / sigma**2 + torch.eye(n, dtype=a.dtype) / tau**2
    return torch.linalg.solve(lhs, g / tau**2 + a.T @ y / sigma**2)


def test_prox_formula_against_a_dense_solve():
    shape = (1, 6, 8)
    op = GaussianMatrix(shape, 20, seed=7, noise_model=GaussianNoiseModel(30, clip=False))
    sigma = op.noise_model.std
    g, truth = _images(1, 5, shape), _images(1, 6, shape)
    y = op(truth, torch.Generator().manual_seed(1)).to(F64)
    a = op.dense()[0]
    for tau in (0.05, 0.3, 2.0):
        got = consistency_step(op, g, y, "prox", tau=tau).image.flatten()
        want = _dense_prox(a, g.flatten(), y.flatten(), sigma, tau)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_prox_with_fitted_tau_against_a_dense_solve():
    """For a mask the trace estimate is exact, so the fitted step is checkable end to end."""
    shape = (1, 8, 8)
    op = Inpainting(RandomMask(0.5).build(shape, 3).mask, noise_model=GaussianNoiseModel(40, clip=False))
    sigma = op.noise_model.std
    g, truth = _images(1, 7, shape), _images(1, 8, shape)
    y = op(truth, torch.Generator().manual_seed(2)).to(F64)
    a = torch.diag(op.mask.flatten().to(F64))
    r = y.flatten() - a @ g.flatten()
    tau2 = max(float(r @ r) - r.numel() * sigma**2, 0.0) / float(torch.trace(a @ a.T))
    assert tau2 > 0
    assert float(gram_trace(op, g)) == float(torch.trace(a @ a.T))
    assert float(prior_variance(op, r.view(1, *shape), sigma, g)) == pytest.approx(tau2, rel=1e-12)
    step = consistency_step(op, g, y, "prox")
    want = _dense_prox(a, g.flatten(), y.flatten(), sigma, math.sqrt(tau2))
    torch.testing.assert_close(step.image.flatten(), want, rtol=0, atol=1e-10)
    assert float(step.damping) == pytest.approx(sigma**2 / tau2)


def test_prox_limits():
    """Denoising: the Wiener weight tau^2 / (tau^2 + sigma^2); noiseless: project; residual within the noise: G.

    (Unclipped noise: for clipped noise lambda uses the clipped variance, see the clipped-noise tests.)
    """
    op = GaussianNoise(25, clip=False)
    g, y = _images(2, 1), _images(2, 2)
    s2 = op.std**2
    step = consistency_step(op, g, y, "prox", tau=0.1)
    torch.testing.assert_close(step.image, g + 0.01 / (0.01 + s2) * (y - g), rtol=0, atol=1e-12)
    noiseless = Inpainting(RandomMask(0.3).build(SHAPE, 1).mask)
    torch.testing.assert_close(consistency_step(noiseless, g, y, "prox").image,
                               consistency_step(noiseless, g, y, "project").image, rtol=0, atol=0)
    near = g + 1e-3 * _images(2, 3)  # the residual is far below the noise: tau = 0, x = G
    with pytest.warns(UserWarning, match="unchanged"):
        kept = consistency_step(op, g, near, "prox")
    assert torch.equal(kept.image, g) and torch.isinf(kept.damping).all()


@pytest.mark.parametrize("mode", ["project", "prox"])
def test_batch_equals_per_sample(mode):
    ops = [PartialCirculant(SHAPE, 90, seed=s, noise_model=GaussianNoiseModel(20, clip=False)) for s in (8, 9)]
    both = PartialCirculant.stack(ops)
    g, truth = _images(2, 10), _images(2, 11)
    y = both(truth, torch.Generator().manual_seed(3)).to(F64)
    batched = consistency_step(both, g, y, mode)
    for b in range(2):
        alone = consistency_step(ops[b], g[b : b + 1], y[b : b + 1], mode)
        torch.testing.assert_close(batched.image[b], alone.image[0], rtol=0, atol=1e-12)


def test_conjugate_gradient_per_sample():
    """Each sample has its own steps and stopping point: it converges as it would alone."""
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(12, 12, generator=gen, dtype=F64) for _ in range(3)]
    spd = torch.stack([m @ m.T + 0.1 * (i + 1) * torch.eye(12, dtype=F64) for i, m in enumerate(mats)])
    rhs = torch.randn(3, 12, generator=gen, dtype=F64)
    rhs[1] = 0.0  # a zero right-hand side converges at once
    res = conjugate_gradient(lambda v: (spd @ v[:, :, None])[:, :, 0], rhs, damping=torch.tensor([0.0, 1.0, 2.0]), tol=1e-12)
    assert bool(res.converged.all()) and res.iterations[1] == 0
    for b, lam in enumerate((0.0, 1.0, 2.0)):
        want = torch.linalg.solve(spd[b] + lam * torch.eye(12, dtype=F64), rhs[b])
        torch.testing.assert_close(res.solution[b], want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="max_iter >= 1"):
        conjugate_gradient(lambda v: v, rhs, max_iter=0)


class _NoStd(NoiseModel):
    def forward(self, y, generator=None):  # noqa: ANN001, ANN201
        return y


def test_refusals_name_the_operator_and_the_fix():
    lam = LambdaOperator(lambda x: x.mean(1))
    for mode in ("project", "prox"):
        with pytest.raises(ValueError, match=r"needs a linear operator with an adjoint.*LambdaOperator.*'none'"):
            check_operator(lam, mode)
        with pytest.raises(ValueError, match="needs a linear operator with an adjoint.*Compose"):
            check_operator(Compose(lam, Identity()), mode)
    check_operator(lam, "none")
    with pytest.raises(ValueError, match=r"needs the noise level.*_NoStd has no numeric `std`"):
        check_operator(Identity(noise_model=_NoStd()), "prox")
    check_operator(Identity(noise_model=_NoStd()), "project")
    with pytest.raises(ValueError, match="consistency must be one of 'none', 'project', 'prox'"):
        check_operator(Identity(), "exact")


def test_classifier_guidance_is_refused_before_any_solve():
    from ilo_pl.operators import ClassifierOperator

    gen = DCGANGenerator()
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    op = ClassifierOperator(net, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match="consistency 'project' needs a linear operator.*ClassifierOperator"):
        solve(gen, op, torch.tensor([1]), [Stage(0, 1)], consistency="project", trainer_kwargs={"enable_progress_bar": False})
    with pytest.raises(ValueError, match="consistency must be one of"):
        ILOModule(gen, [Stage(0, 1)], consistency="exact")


def test_data_module_operator_is_checked_when_the_fit_starts(monkeypatch):
    """The module's setup builds the data's operator: refused before any problem is loaded."""
    import pytorch_lightning as pl

    from ilo_pl.api import default_trainer_kwargs
    from ilo_pl.data import InverseProblemDataModule
    from ilo_pl.operators.base import OperatorSpec

    class Blur(OperatorSpec):
        shared = True

        def build(self, image_shape, seed, name=None):  # noqa: ANN001, ANN201
            return LambdaOperator(lambda x: x)

    gen = DCGANGenerator()
    dm = InverseProblemDataModule(Blur(), data="samples")
    loaded = []
    monkeypatch.setattr(dm, "make_batch", lambda idx: loaded.append(idx))
    trainer = pl.Trainer(**{**default_trainer_kwargs(), "enable_progress_bar": False})
    with pytest.raises(ValueError, match="consistency 'prox' needs a linear operator.*LambdaOperator"):
        trainer.fit(ILOModule(gen, [Stage(0, 1)], consistency="prox"), datamodule=dm)
    assert loaded == []


@pytest.mark.parametrize("mode", ["project", "prox"])
def test_solve_saves_and_regenerates_the_corrected_image(mode, tmp_path):
    """Through the writer: the saved image includes the step, the file says so, regenerate reproduces it."""
    import csv

    gen = DCGANGenerator()
    with torch.no_grad():
        x = gen.render(gen.init_variables(2, torch.Generator().manual_seed(1)), 0)
    op = BicubicDownsample(4) if mode == "project" else Compose(BicubicDownsample(4), GaussianNoise(10))
    y = op(x, torch.Generator().manual_seed(0))
    stages = [Stage(0, 4), Stage(1, 2, radius={"state": 300.0})]
    writer = ResultWriter(output_dir=tmp_path)
    res = solve(gen, op, y, stages, ids=["a", "b"], consistency=mode, restarts=2, callbacks=[writer],
                trainer_kwargs={"enable_progress_bar": False})
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["id"]: r for r in csv.DictReader(open(run / "results.csv"))}
    for b, pid in enumerate(["a", "b"]):
        sol = load_solution(run / f"{pid}_solution.pt")
        assert sol["format"] == FORMAT_CORRECTED and sol["consistency"]["mode"] == mode
        assert "includes the final consistency step" in sol["consistency"]["note"]
        image = regenerate(sol, gen)
        assert torch.equal(image, sol["image"]) and torch.equal(image[0], res.images[b])
        with torch.no_grad():
            plain = gen.render({k: v for k, v in sol["state"].items()}, sol["split"])
            err = op.measurement_error(op.A(image), y[b : b + 1])
        assert not torch.equal(plain, image)  # not in the generator's range
        assert float(rows[pid]["measurement_loss"]) == pytest.approx(float(err), rel=1e-5, abs=1e-12)
        if mode == "project":  # the step explains y; the reported image is that step clamped to [-1, 1]
            corrected = plain.double() + sol["consistency"]["correction"].double()
            assert float(op.measurement_error(op.A(corrected), y[b : b + 1].double())) < 1e-10
            torch.testing.assert_close(image, corrected.clamp(-1, 1).float(), rtol=0, atol=1e-6)


# -- review fixes: nested adjoints, clipped noise, noisy `project`, exact traces, clamped outputs, one warning --


class _ScaleWithoutAdjoint(LinearOperator):
    """A linear operator that does not define ``A_adjoint`` (a user's half-finished operator)."""

    def A(self, x):  # noqa: ANN001, ANN201, N802
        return 2 * x


def test_a_composition_with_a_part_lacking_an_adjoint_is_refused():
    """``Compose`` of linear parts is a LinearCompose; the check looks inside it (and nested ones)."""
    op = Compose(_ScaleWithoutAdjoint(), GaussianNoise(0))
    assert isinstance(op, LinearCompose)
    nested = Compose(Compose(BicubicDownsample(2), _ScaleWithoutAdjoint()), Identity())
    for bad in (op, nested):
        assert not has_adjoint(bad)
        for mode in ("project", "prox"):
            with pytest.raises(ValueError, match=r"needs a linear operator with an adjoint.*_ScaleWithoutAdjoint"):
                check_operator(bad, mode)
    assert has_adjoint(Compose(Compose(BicubicDownsample(2), Identity()), GaussianNoise(0)))
    # Refused before the solve, not with NotImplementedError at its very last step.
    gen = DCGANGenerator()
    with pytest.raises(ValueError, match="_ScaleWithoutAdjoint"):
        solve(gen, op, torch.zeros(1, 3, 64, 64), [Stage(0, 1)], consistency="project",
              trainer_kwargs={"enable_progress_bar": False})


def _clipped_moments_mc(mu: torch.Tensor, s: float, draws: int = 200_000):
    e = torch.randn(draws, *mu.shape, generator=torch.Generator().manual_seed(0), dtype=F64) * s
    w = (mu + e).clamp(-1, 1) - mu
    return w.pow(2).mean(0), w.mean(0), ((mu + e).clamp(-1, 1)).var(0)


def test_clipped_gaussian_moments_closed_form():
    """E[(clip(mu + e) - mu)^2], E[clip(mu + e) - mu] and Var clip(mu + e), e ~ N(0, s^2), against Monte Carlo."""
    mu = torch.tensor([-1.2, -1.0, -0.7, 0.0, 0.4, 0.95, 1.0], dtype=F64)
    for s in (0.05, 0.3, 0.784, 2.0):
        m2, m1, var = clipped_moments(mu, torch.tensor(s, dtype=F64))
        mc2, mc1, mcv = _clipped_moments_mc(mu, s)
        torch.testing.assert_close(m2, mc2, rtol=0.02, atol=2e-4)
        torch.testing.assert_close(m1, mc1, rtol=0.02, atol=6e-3)
        torch.testing.assert_close(var, mcv, rtol=0.02, atol=2e-4)
    # Unclipped limit: far inside the range the moments are those of the Gaussian.
    m2, m1, var = clipped_moments(torch.zeros(1, dtype=F64), torch.tensor(0.01, dtype=F64))
    assert float(m2) == pytest.approx(1e-4, rel=1e-12) and float(var) == pytest.approx(1e-4, rel=1e-12)


def _mc_operators(shape):
    return {
        "denoising": Identity(),
        "inpainting": Inpainting(RandomMask(0.5).build(shape, 3).mask),
        "superres_x2": BicubicDownsample(2),
    }


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("name,sigma,tau", [("denoising", 100, 0.3), ("inpainting", 100, 0.3), ("superres_x2", 50, 0.5)])
def test_prox_fits_tau_under_heavy_clipped_noise(name, sigma, tau, clip):
    """Monte Carlo: x = G + tau z, y = noise(A x); the fitted tau^2 averages to tau^2, clipped or not.

    Clipping to [-1, 1] lowers the noise's second moment (about 0.4 against sigma^2 = 0.615 at sigma 100),
    which the unclipped fit ``(||r||^2 - N sigma^2) / tr`` took for noise: tau = 0 and x = G.
    (Super-resolution: a milder level, as its rows see a ninth of the image's variance.)
    """
    shape, draws = (3, 64, 64), 24
    model = GaussianNoiseModel(sigma, clip=clip)
    op = _mc_operators(shape)[name].with_noise(model)
    gen = torch.Generator().manual_seed(11)
    g = torch.rand(1, *shape, generator=gen, dtype=F64) * 1.8 - 0.9
    fits, improved = [], []
    for k in range(draws):
        truth = g + tau * torch.randn(g.shape, generator=gen, dtype=F64)
        y = op.noise(op.A(truth), gen)
        r = y - op.A(g)
        t2 = prior_variance(op, r, model.std, g, clip=clip)
        fits.append(float(t2))
        if name == "denoising" and k < 4:
            x = consistency_step(op, g, y, "prox").image
            improved.append(float((x - truth).pow(2).mean()) < float((g - truth).pow(2).mean()))
    fits = torch.tensor(fits)
    assert (fits > 0).all(), fits
    se = float(fits.std()) / math.sqrt(draws)
    assert abs(float(fits.mean()) - tau**2) < max(4 * se, 0.05 * tau**2), (float(fits.mean()), se)
    assert all(improved)


def test_prox_clipped_noise_uses_the_clipped_variance_in_lambda():
    """Denoising with a given tau: lambda = (mean clipped noise variance at A G) / tau^2."""
    op = GaussianNoise(100)
    g, y = _images(2, 1) * 0.9, _images(2, 2)
    step = consistency_step(op, g, y, "prox", tau=0.2)
    _, _, var = clipped_moments(g, torch.tensor(op.std, dtype=F64))
    v = var.flatten(1).mean(1)
    torch.testing.assert_close(step.damping, v / 0.04, rtol=1e-12, atol=0)
    assert (v < 0.8 * op.std**2).all()  # well below sigma^2: clipping matters at this level
    unclipped = consistency_step(GaussianNoise(100, clip=False), g, y, "prox", tau=0.2)
    torch.testing.assert_close(unclipped.damping, torch.full((2,), op.std**2 / 0.04, dtype=F64), rtol=1e-12, atol=0)


def test_prox_that_leaves_g_unchanged_warns_once_naming_the_problems():
    op = GaussianNoise(25)
    g = _images(3, 1)
    near = g.clone()
    near[1] = _images(1, 5)[0]  # problem "b" is far from G: corrected
    near[0] += 1e-3 * _images(1, 3)[0]
    near[2] += 1e-3 * _images(1, 4)[0]
    with pytest.warns(UserWarning) as record:
        step = consistency_step(op, g, near, "prox", ids=["a", "b", "c"])
    kept = [w for w in record if "unchanged" in str(w.message)]
    assert len(kept) == 1, [str(w.message) for w in record]
    msg = str(kept[0].message)
    assert "a, c" in msg and "'b'" not in msg and " b" not in msg.split("unchanged")[0]
    assert torch.equal(step.image[0], g[0]) and not torch.equal(step.image[1], g[1])


@pytest.mark.parametrize(
    "op",
    [GaussianNoise(25), Inpainting(RandomMask(0.3).build((3, 64, 64), 1).mask, noise_model=GaussianNoiseModel(10))],
    ids=["denoising", "noisy_inpainting"],
)
def test_project_on_a_noisy_operator_warns_at_setup_naming_prox(op):
    import warnings as _w

    gen = DCGANGenerator()
    with torch.no_grad():
        x = gen.render(gen.init_variables(2, torch.Generator().manual_seed(1)), 0)
    y = op(x, torch.Generator().manual_seed(0))
    with _w.catch_warnings(record=True) as record:
        _w.simplefilter("always")
        solve(gen, op, y, [Stage(0, 1)], consistency="project", trainer_kwargs={"enable_progress_bar": False})
    noisy = [w for w in record if "consistency 'project'" in str(w.message) and "'prox'" in str(w.message)]
    assert len(noisy) == 1, [str(w.message) for w in record]
    assert "noise" in str(noisy[0].message)
    with _w.catch_warnings(record=True) as record:
        _w.simplefilter("always")
        solve(gen, op.with_noise(None), op.with_noise(None).A(x), [Stage(0, 1)], consistency="project",
              trainer_kwargs={"enable_progress_bar": False})
        solve(gen, op, y, [Stage(0, 1)], consistency="prox", trainer_kwargs={"enable_progress_bar": False})
    assert not [w for w in record if "consistency 'project'" in str(w.message)]


def _dense_matrix(op, shape, batch: int) -> torch.Tensor:
    """``[B, m, n]``: A applied to each basis image (every sample at once)."""
    n = math.prod(shape)
    cols = []
    for j in range(n):
        e = torch.zeros(batch, n, dtype=F64)
        e[:, j] = 1
        cols.append(op.A(e.view(batch, *shape)).flatten(1))
    return torch.stack(cols, 2)


def _trace_operators():
    shape = (2, 8, 8)
    masks = Inpainting.stack([RandomMask(0.3).build(shape, s) for s in (1, 2)])
    ops = {
        "inpainting": (masks, 2),
        "identity": (GaussianNoise(10), 1),
        "cs_circulant": (PartialCirculant.stack([PartialCirculant(shape, 37, seed=s) for s in (3, 4)]), 2),
        "cs_gaussian": (GaussianMatrix(shape, 40, seed=5), 1),
        "composed_superres": (Compose(BicubicDownsample(2), GaussianNoise(5)), 1),
    }
    for pad in ("reflect", "symmetric", "replicate", "circular"):
        for factor in (2, 4):
            ops[f"superres_x{factor}_{pad}"] = (BicubicDownsample(factor, pad), 1)
    return shape, ops


@pytest.mark.parametrize("name", list(_trace_operators()[1]))
def test_gram_trace_and_diagonal_are_exact(name):
    """tr(A A^T) and diag(A A^T) in closed form against the dense matrix (Hutchinson had a fixed bias)."""
    shape, ops = _trace_operators()
    op, batch = ops[name]
    a = _dense_matrix(op, shape, batch)
    like = torch.zeros(batch, *shape, dtype=F64)
    want_diag = a.pow(2).sum(2)
    diag = gram_diagonal(op, like)
    assert diag is not None and tuple(diag.shape) == tuple(op.A(like).shape)
    torch.testing.assert_close(diag.flatten(1), want_diag, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gram_trace(op, like), want_diag.sum(1), rtol=1e-12, atol=0)


def test_gram_trace_falls_back_to_hutchinson():
    """Two non-identity parts: no closed form; Hutchinson (exact for a diagonal A^T A: two masks)."""
    shape = (1, 8, 8)
    m1, m2 = RandomMask(0.5).build(shape, 1), RandomMask(0.5).build(shape, 2)
    op = Compose(m1, m2)
    assert op.gram_diagonal(torch.zeros(1, *shape)) is None
    like = torch.zeros(1, *shape, dtype=F64)
    assert float(gram_trace(op, like)) == float((m1.mask * m2.mask).sum())


def test_clamped_image_is_what_is_reported_saved_and_regenerated(tmp_path):
    """The corrected image goes outside [-1, 1]: result, loss, PNG and regenerate all use the clamped image."""
    import csv

    from PIL import Image
    import numpy as np

    from ilo_pl.io import to_uint8

    gen = DCGANGenerator()
    truth = torch.randint(0, 2, (1, 3, 64, 64), generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    op = BicubicDownsample(4)
    y = op.A(truth)
    writer = ResultWriter(output_dir=tmp_path)
    res = solve(gen, op, y, [Stage(0, 2)], ids=["a"], consistency="project", callbacks=[writer],
                trainer_kwargs={"enable_progress_bar": False})
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    sol = load_solution(run / "a_solution.pt")
    with torch.no_grad():
        plain = gen.render(sol["state"], sol["split"])
    assert (plain + sol["consistency"]["correction"]).abs().max() > 1.01  # the unclamped step overshoots
    assert res.images.abs().max() <= 1.0
    image = regenerate(sol, gen)
    assert image.abs().max() <= 1.0 and torch.equal(image[0], res.images[0]) and torch.equal(image, sol["image"])
    err = op.measurement_error(op.A(res.images), y)
    assert float(res.measurement_loss[0]) == pytest.approx(float(err), rel=1e-6)
    row = next(csv.DictReader(open(run / "results.csv")))
    assert float(row["measurement_loss"]) == pytest.approx(float(err), rel=1e-5)
    png = np.asarray(Image.open(run / "a_reconstruction.png"))
    assert np.array_equal(png, to_uint8(image[0]))
    assert "clamp" in sol["consistency"]["note"]


def test_an_unconverged_solve_warns_once_naming_the_problems(monkeypatch):
    """CG short of its tolerance: one warning (not one from the solver and another from the module), naming ids."""
    import warnings as _w

    from ilo_pl.operators import consistency as cons

    real = cons.conjugate_gradient
    monkeypatch.setattr(cons, "conjugate_gradient", lambda *a, **k: real(*a, **{**k, "max_iter": 2}))
    gen = DCGANGenerator()
    with torch.no_grad():
        x = gen.render(gen.init_variables(2, torch.Generator().manual_seed(1)), 0)
    op = PartialCirculant((3, 64, 64), 3000, seed=1)
    with _w.catch_warnings(record=True) as record:
        _w.simplefilter("always")
        solve(gen, op, op.A(x), [Stage(0, 1)], ids=["p1", "p2"], consistency="project",
              trainer_kwargs={"enable_progress_bar": False})
    approx = [str(w.message) for w in record if "approximate" in str(w.message)]
    assert len(approx) == 1, approx
    assert "p1" in approx[0] and "p2" in approx[0]
