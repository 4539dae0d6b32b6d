"""Tests of :class:`~ilo_pl.modules.generators.nvlabs.StyleGAN2ADAGenerator`.

* conformance: the NVlabs fixture snapshots (``../shared/fixtures/nvlabs``), loaded by
  path only (current and legacy pickle), reproduce every reference entry of
  ``stylegan2ada_tiny_shared_reference.pt`` to 1e-4 in both modulated-convolution
  forms, and ``img_const_G`` (the non-EMA ``G``) does not match;
* the split contract (``SplitGeneratorContract``) for the fixture (W+ and Gaussian
  fit) and for random-weight ``orig`` / ``resnet`` / conditional / fp16-block networks;
* state layout, noise modes, the default class label, the modulated convolution's form, errors.

Per-problem class labels (data, batches, regenerate) are in ``test_generators_conditional.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch

from ilo_pl.modules.generators.nvlabs import NetworkPickleError, StyleGAN2ADAGenerator
from ilo_pl.stages import check_stage_names, paper_stages
from ilo_pl.testing.generators import SplitGeneratorContract
from nvlabs_common import ADA_LEGACY_PKL as LEGACY
from nvlabs_common import ADA_PKL as SHARED
from nvlabs_common import NV, TOL, nv_reference
from nvlabs_common import max_err as _err
from nvlabs_common import nv_fixture as _fixture
from nvlabs_common import random_ada as _random


@pytest.fixture(scope="module")
def ref() -> Dict[str, torch.Tensor]:
    return nv_reference("stylegan2ada_tiny_shared")


@pytest.mark.parametrize("impl", ["fused", "unfused"])
@pytest.mark.parametrize("path", [SHARED, LEGACY], ids=["shared", "legacy"])
def test_reproduces_every_reference_entry(path: Path, impl: str, ref: Dict[str, torch.Tensor], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    g = StyleGAN2ADAGenerator(_fixture(path), modconv_impl=impl)
    z, psi = ref["z"], float(ref["truncation_psi"])
    c = ref.get("c")
    for name in ("num_ws", "w_dim", "z_dim", "c_dim", "img_resolution", "img_channels"):
        assert getattr(g, name) == int(ref[name]), name
    with torch.no_grad():
        errs = {
            "ws": _err(g.mapping(z, c, truncation_psi=1), ref["ws"]),
            "ws_trunc": _err(g.mapping(z, c, truncation_psi=psi), ref["ws_trunc"]),
            "img_const": _err(g(z, c, truncation_psi=1, noise_mode="const"), ref["img_const"]),
            "img_none": _err(g(z, c, truncation_psi=1, noise_mode="none"), ref["img_none"]),
            "img_trunc": _err(g(z, c, truncation_psi=psi, noise_mode="const"), ref["img_trunc"]),
            "img_from_ws": _err(g.synthesis(ref["ws_custom"], noise_mode="const"), ref["img_from_ws"]),
        }
        assert all(e < TOL for e in errs.values()), errs
        # G, not G_ema, made img_const_G: a loader that took G would match it.
        assert _err(g(z, c, noise_mode="const"), ref["img_const_G"]) > 1.0
    assert not (tmp_path / "EMBEDDED_PICKLE_CODE_RAN").exists()


def test_taking_g_instead_of_g_ema_matches_img_const_g(ref: Dict[str, torch.Tensor]) -> None:
    g = StyleGAN2ADAGenerator(_fixture(SHARED), network="G")
    with torch.no_grad():
        assert _err(g(ref["z"], None, noise_mode="const"), ref["img_const_G"]) < TOL


def test_split_state_renders_the_reference_image(ref: Dict[str, torch.Tensor]) -> None:
    g = StyleGAN2ADAGenerator(_fixture(SHARED), noise_mode="const")
    state = g.init_variables(4)
    state["latent"] = ref["ws_custom"].clone()
    with torch.no_grad():
        for k in range(g.num_splits + 1):
            img = g.render(g.advance(state, 0, k), k)
            assert _err(img, ref["img_from_ws"]) < TOL, k


class TestStyleGAN2ADAContract(SplitGeneratorContract):
    """The split contract of the fixture snapshot in W+."""

    batch = 3
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return StyleGAN2ADAGenerator(_fixture(SHARED)).to(device)


class TestStyleGAN2ADAGaussianFitContract(TestStyleGAN2ADAContract):
    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return StyleGAN2ADAGenerator(_fixture(SHARED), latent_space="gaussian_fit", gaussian_fit_samples=2000).to(device)


class TestOrigContract(SplitGeneratorContract):
    batch = 2
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(architecture="orig").to(device)


class TestResnetContract(TestOrigContract):
    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(architecture="resnet").to(device)


class TestConditionalFp16Contract(TestOrigContract):
    """A conditional network with fp16 blocks (computed in float32 on the CPU), its default class for all."""

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(c_dim=5, num_fp16_res=2, class_label=3, fp16=True).to(device)


def test_state_layout_and_groups() -> None:
    g = StyleGAN2ADAGenerator(_fixture(SHARED))
    assert g.num_layers == 7 and g.num_splits == 6
    s = g.init_variables(2, torch.Generator().manual_seed(0))
    assert s["latent"].shape == (2, 8, 32)
    assert [s[f"noise_{j}"].shape[-1] for j in range(7)] == [4, 8, 8, 16, 16, 32, 32]
    s3 = g.advance(s, 0, 3)
    assert list(s3) == ["h", "skip", "latent"] + [f"noise_{j}" for j in range(3, 7)]
    assert s3["skip"].shape == (2, 3, 8, 8) and s3["latent"].shape == (2, 5, 32)
    assert g.groups(3)["skip"] == "skip" and g.groups(3)["h"] == "state"
    stages = paper_stages(g, steps=(1, 1, 1, 1))
    check_stage_names(stages, g)
    r = _random(architecture="resnet")
    assert "residual" in r.state_names(2) and "residual" not in r.state_names(3)
    assert "skip" not in _random(architecture="orig").state_names(3)


def test_noise_modes() -> None:
    g = StyleGAN2ADAGenerator(_fixture(SHARED), noise_mode="const")
    s = g.init_variables(2)
    assert torch.equal(s["noise_0"][0, 0], g.synthesis.b4.conv1.noise_const)
    none = StyleGAN2ADAGenerator(_fixture(SHARED), noise_mode="none")
    assert not any(n.startswith("noise") for n in none.state_names(0))
    with torch.no_grad():
        s = none.init_variables(2, torch.Generator().manual_seed(0))
        ws = s["latent"]
        assert _err(none.render(s, 0), none.synthesis(ws, noise_mode="none")) < 1e-5
    with pytest.raises(ValueError, match="noise_mode"):
        StyleGAN2ADAGenerator(_fixture(SHARED), noise_mode="const_noise")


def test_default_class_label() -> None:
    """``class_label`` is one class for every problem: in each state, whatever the batch size."""
    g = _random(c_dim=4, class_label=3)
    assert g.num_classes == 4 and g.check_labels(None, 3) == [3, 3, 3]
    with pytest.raises(ValueError, match="conditional"):
        g.mapping(torch.randn(2, 16), None)
    s = g.init_variables(3, torch.Generator().manual_seed(0))
    assert s["class_label"].tolist() == [3.0, 3.0, 3.0] and g.groups(0)["class_label"] == "condition"
    with pytest.raises(ValueError, match=r"class_label 7 is out of range.*4 classes \(0\.\.3\)"):
        _random(c_dim=4, class_label=7)
    with pytest.raises(ValueError, match="unconditional"):
        _random(class_label=1)
    # A list would be the old per-batch-position cycling: refused, pointing at per-problem labels.
    with pytest.raises(ValueError, match="one class for every problem.*data.class_labels"):
        _random(c_dim=4, class_label=[0, 3])


@pytest.mark.parametrize("frees_latent", [True, False])
def test_auto_modconv_asks_whether_the_styles_need_a_gradient(frees_latent: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``modconv_impl="auto"`` passes ``style_grad`` as the rosinality layers do: at batch 1 with autograd
    on, a stage that keeps the latent fixed (only ``h`` free) runs fused, one that frees it unfused."""
    from ilo_pl.modules.generators.nvlabs import ops

    calls: List[object] = []
    real = ops.resolve_modconv_impl

    def spy(impl: str, batch: int, device: object = None, style_grad: object = None) -> str:
        calls.append(style_grad)
        return real(impl, batch, device, style_grad)

    monkeypatch.setattr(ops, "resolve_modconv_impl", spy)
    g = StyleGAN2ADAGenerator(_fixture(SHARED))
    with torch.no_grad():
        state = g.advance(g.init_variables(1, torch.Generator().manual_seed(0)), 0, 2)
        want = g.render(state, 2)
    state = {k: v.clone() for k, v in state.items()}
    free = "latent" if frees_latent else "h"
    state[free].requires_grad_(True)
    calls.clear()
    img = g.render(state, 2)
    assert calls and all(c is frees_latent for c in calls), calls
    assert _err(img.detach(), want) < 1e-5  # the two forms are the same function up to rounding
    img.square().sum().backward()
    assert state[free].grad is not None and torch.isfinite(state[free].grad).all()


def test_refuses_a_stylegan3_pickle() -> None:
    with pytest.raises(NetworkPickleError, match="StyleGAN3"):
        StyleGAN2ADAGenerator(_fixture(NV / "stylegan3t_tiny.pkl"))
