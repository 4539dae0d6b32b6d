"""End-to-end checks of the CUDA paths (marked ``gpu``: skipped without a CUDA GPU).

On a GPU the engine takes its accelerator path (no host reads per step:
best-iterate tracking and failure masking by ``torch.where``), the l1
projection its pure-PyTorch batched search, and StyleGAN-2 its compiled
``upfirdn2d``/``fused_leaky_relu`` kernels. Each test runs the same work on
the CPU and compares; a :class:`_DeviceProbe` checks that the GPU solve really
ran on the GPU (module, variables, batch), so a silent CPU fallback fails.
The projection checks compare with an independent float64 sort reference, so
they also run on the CPU (the ``device`` fixture); the solve comparisons need
a GPU (a CPU solve compared with a CPU solve would prove nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY
from ilo_pl.api import solve
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import RandomMask
from ilo_pl.projections import L1Workspace, project_l1_ball_, project_l1_ball_sort
from ilo_pl.policy import native_only
from ilo_pl.stages import Stage

DCGAN_STAGES = [
    Stage(split=0, steps=8, lr=0.05, free=["latent"]),
    Stage(split=1, steps=8, lr=0.05, free=["state", "latent"], radius={"state": 20.0}),
    Stage(split=2, steps=8, lr=0.05, free=["state", "latent"], radius={"state": 20.0}),
]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1]."""
    mse = ((a.float().cpu() - b.float().cpu()) ** 2).mean().clamp_min(1e-20)
    return float(-10 * torch.log10(mse / 4))


class _DeviceProbe(pl.Callback):
    """Records the device types the module, the optimised variables and the batch live on, at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen.add(("module", pl_module.device.type))
        self.seen.add(("batch", batch.observation.device.type))
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    self.seen.add(("variable", p.device.type))

    def devices(self) -> set:
        """The device types seen, whatever held them."""
        return {dev for _, dev in self.seen}


def _check_dcgan_solve(device: str) -> None:
    """A DCGAN ILO solve on ``device`` (not the CPU) follows the CPU solve and its solutions regenerate its images."""
    assert device != "cpu", "comparing a CPU solve with a CPU solve proves nothing"
    torch.manual_seed(0)
    gen = DCGANGenerator()
    with torch.no_grad():
        x = gen.render(gen.init_variables(2, torch.Generator().manual_seed(3)), 0)
    op = RandomMask(0.5).build(gen.image_shape, 0)
    y = op(x)
    ref_probe, probe = _DeviceProbe(), _DeviceProbe()
    ref = solve(gen, op, y, DCGAN_STAGES, trainer_kwargs={"accelerator": "cpu"}, callbacks=[ref_probe])
    got = solve(gen.to(device), op, y, DCGAN_STAGES, trainer_kwargs={"accelerator": "gpu"}, callbacks=[probe])
    assert ref_probe.devices() == {"cpu"}
    assert probe.devices() == {device}, probe.seen  # the solve ran on the GPU: module, variables and batch
    assert {kind for kind, _ in probe.seen} == {"module", "batch", "variable"}
    assert next(gen.parameters()).device.type == device  # solve() gives the generator back where it was
    assert got.failed == [None, None]
    assert torch.isfinite(got.images).all() and torch.isfinite(got.measurement_loss).all()
    # Float rounding differs between devices; 24 Adam steps keep the trajectories close.
    assert _psnr(got.images, ref.images) > 35, _psnr(got.images, ref.images)
    torch.testing.assert_close(got.measurement_loss.cpu(), ref.measurement_loss.cpu(), rtol=0.05, atol=1e-4)
    for b, sol in enumerate(got.solutions):
        with torch.no_grad():
            again = gen.render({k: v.to(device) for k, v in sol.state.items()}, sol.split)
        torch.testing.assert_close(again.cpu(), got.images[b : b + 1].cpu(), atol=1e-4, rtol=1e-4)


def _check_inplace_projection(device: str, host_reads: bool = True) -> None:
    """The in-place projection with a warm workspace on ``device`` equals the sort reference.

    ``host_reads=False`` is the path the engine takes on accelerators.
    """
    g = torch.Generator().manual_seed(5)
    anchor = torch.randn(4, 64, 32, 32, generator=g)
    param = anchor + torch.randn(4, 64, 32, 32, generator=g)
    radius = (param - anchor).abs().flatten(1).sum(1) * torch.tensor([0.01, 0.3, 0.9, 1.5])
    ws, p = L1Workspace(host_reads=host_reads), param.to(device)
    a, r = anchor.to(device), radius.to(device)
    for step in range(3):  # warm starts along a drifting trajectory
        p += 1e-3 * torch.randn(p.shape, generator=g).to(device)
        want = a + project_l1_ball_sort((p - a).flatten(1).double(), r.double()).view_as(p).float()
        before = p.clone()
        project_l1_ball_(p, a, r, ws)
        torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(p[3], before[3])  # inside: untouched, bit for bit


def _check_stylegan2(device: str) -> None:
    """The tiny StyleGAN-2 on ``device``: same images as on the CPU, G2(G1(z)) == G(z), a 16-mixed solve."""
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

    if not TINY.is_file():
        pytest.fail(f"missing fixture {TINY}: the shared fixtures must be at ../shared/fixtures")
    cpu = StyleGAN2Generator.from_checkpoint(TINY, mean_latent_samples=256)
    gen = StyleGAN2Generator.from_checkpoint(TINY, mean_latent_samples=256).to(device)
    state = cpu.init_variables(2, torch.Generator().manual_seed(4))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's default TF32 convolutions differ from the CPU by ~1e-3
    try:
        with torch.no_grad():
            want = cpu.render(state, 0)
            full = gen.render({k: v.to(device) for k, v in state.items()}, 0)
            torch.testing.assert_close(full.cpu(), want, atol=2e-4, rtol=1e-4)
            for split in range(1, gen.num_splits + 1):  # the RGB skip crosses every split
                deep = gen.advance({k: v.to(device) for k, v in state.items()}, 0, split)
                torch.testing.assert_close(gen.render(deep, split), full, atol=1e-5, rtol=1e-5)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    op = RandomMask(0.5).build(gen.image_shape, 0)
    y = op(want[:1])
    stages = [
        Stage(split=0, steps=6, lr=0.05, free=["latent", "noise"], radius={"latent": 5.0}),
        Stage(split=2, steps=6, lr=0.05, free=["latent", "state", "noise"], radius={"latent": 5.0, "state": 5.0}),
    ]
    precision = "16-mixed" if device == "cuda" else "bf16-mixed"
    acc = "gpu" if device == "cuda" else "cpu"
    probe = _DeviceProbe()
    res = solve(gen, op, y, stages, sphere=True, trainer_kwargs={"precision": precision, "accelerator": acc},
                callbacks=[probe])
    assert probe.devices() == {device}, probe.seen
    assert res.failed == [None]
    assert torch.isfinite(res.images).all() and torch.isfinite(res.measurement_loss).all()


@pytest.mark.gpu
def test_dcgan_solve_on_gpu_matches_cpu() -> None:
    _check_dcgan_solve("cuda")


@pytest.mark.parametrize("host_reads", [True, False])
def test_inplace_projection_matches_sort_reference(device: str, host_reads: bool) -> None:
    """Compared with an independent float64 sort reference: meaningful on the CPU too."""
    _check_inplace_projection(device, host_reads)


@pytest.mark.gpu
def test_stylegan2_on_gpu_uses_the_cuda_kernels_and_matches_cpu() -> None:
    from torch.utils.cpp_extension import CUDA_HOME

    from ilo_pl.ops import _cuda

    if CUDA_HOME is not None and not native_only():  # a toolkit is there: the build must work
        assert _cuda.load_extension() is not None, "the CUDA kernels failed to build (see the warning above)"
    _check_stylegan2("cuda")


def test_device_probe_sees_where_a_solve_ran() -> None:
    """The probe that proves the GPU solve ran on the GPU reports a CPU solve as 'cpu' (so it can fail)."""
    gen = DCGANGenerator()
    with torch.no_grad():
        x = gen.render(gen.init_variables(1, torch.Generator().manual_seed(3)), 0)
    op = RandomMask(0.5).build(gen.image_shape, 0)
    probe = _DeviceProbe()
    solve(gen, op, op(x), [Stage(split=0, steps=2, lr=0.05, free=["latent"])], trainer_kwargs={"accelerator": "cpu"},
          callbacks=[probe])
    assert probe.seen == {("module", "cpu"), ("batch", "cpu"), ("variable", "cpu")}
    with pytest.raises(AssertionError, match="proves nothing"):
        _check_dcgan_solve("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is visible")
def test_gpu_checks_script_says_when_there_is_no_gpu(tmp_path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_checks.sh"), "tests"], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 1
    assert "no CUDA device is visible to PyTorch" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_gpu_run_selects_the_cuda_tests(pytestconfig) -> None:  # noqa: ANN001
    """``pytest -m gpu`` (scripts/gpu_checks.sh) still selects the CUDA tests once kept by hand."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        capture_output=True, text=True, cwd=pytestconfig.rootpath, check=False,
    ).stdout
    for test_id in (
        "tests/test_ops.py::test_cuda_kernels_match_ref",
        "tests/test_precision.py::test_16_mixed_on_gpu_keeps_float32_and_constraints",
        "tests/test_classifier.py::test_robust_classifier_runs_on_the_device_of_its_inputs",
        "tests/test_projections.py::test_kernel_impl_refuses_cuda_tensors",
        "tests/test_gpu.py::test_dcgan_solve_on_gpu_matches_cpu",
    ):
        assert test_id in out, f"{test_id} is not in the GPU run"
    assert "test_gpu_checks_script_says_when_there_is_no_gpu" not in out
