"""Helpers the NVIDIA-generator tests share (``test_nvlabs_*.py``, ``test_generators_conditional.py``).

* the fixture snapshots of ``../shared/fixtures/nvlabs`` (a missing one fails, never skips);
* :func:`max_err`, the largest absolute difference of two tensors;
* :func:`random_ada`: a small StyleGAN2-ADA with random weights (conditional with ``c_dim``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch

from conftest import FIXTURES
from ilo_pl.modules.generators.nvlabs import StyleGAN2ADAGenerator

NV = FIXTURES / "nvlabs"
ADA_PKL = NV / "stylegan2ada_tiny_shared.pkl"
ADA_LEGACY_PKL = NV / "stylegan2ada_tiny_shared_legacy.pkl"
SG3_PKL = NV / "stylegan3t_tiny.pkl"
#: The conformance tolerance of the fixture README (a faithful reimplementation is ~1e-5 off).
TOL = 1e-4


def nv_fixture(path: Path) -> Path:
    """``path`` if the fixture exists; fails the test otherwise (the fixtures are required)."""
    if not path.is_file():
        pytest.fail(f"missing fixture {path}: the shared fixtures must be at ../shared/fixtures/nvlabs")
    return path


def nv_reference(name: str) -> Dict[str, torch.Tensor]:
    """The reference entries ``<name>_reference.pt`` (plain tensors, read weights-only)."""
    return torch.load(nv_fixture(NV / f"{name}_reference.pt"), weights_only=True)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|``."""
    return (a - b).abs().max().item()


def random_ada(**kw: object) -> StyleGAN2ADAGenerator:
    """A 16x16 StyleGAN2-ADA with seeded random weights; noise strengths and biases made non-zero."""
    torch.manual_seed(0)
    args = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16,
                mapping_kwargs={"num_layers": 2}, conv_clamp=256, mean_latent_samples=256)
    args.update(kw)
    g = StyleGAN2ADAGenerator(**args)
    # Non-zero noise strengths and biases, so the noise inputs matter.
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return g
