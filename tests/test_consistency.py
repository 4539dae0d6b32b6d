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
    NoiseModel,
    PartialCirculant,
    RandomMask,
)
from ilo_pl.operators.consistency import (
    check_operator,
    conjugate_gradient,
    consistency_step,
    gram_trace,
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
    """Denoising: the Wiener weight tau^2 / (tau^2 + sigma^2); noiseless: project; residual within the noise: G."""
    op = GaussianNoise(25)
    g, y = _images(2, 1), _images(2, 2)
    s2 = op.std**2
    step = consistency_step(op, g, y, "prox", tau=0.1)
    torch.testing.assert_close(step.image, g + 0.01 / (0.01 + s2) * (y - g), rtol=0, atol=1e-12)
    noiseless = Inpainting(RandomMask(0.3).build(SHAPE, 1).mask)
    torch.testing.assert_close(consistency_step(noiseless, g, y, "prox").image,
                               consistency_step(noiseless, g, y, "project").image, rtol=0, atol=0)
    near = g + 1e-3 * _images(2, 3)  # the residual is far below the noise: tau = 0, x = G
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
        if mode == "project":
            assert float(err) < 1e-10
