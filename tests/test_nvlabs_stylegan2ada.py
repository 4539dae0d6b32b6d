"""Tests of :class:`~ilo_pl.modules.generators.nvlabs.StyleGAN2ADAGenerator`.

* conformance: the NVlabs fixture snapshots (``../shared/fixtures/nvlabs``), loaded by
  path only (current and legacy pickle), reproduce every reference entry of
  ``stylegan2ada_tiny_shared_reference.pt`` to 1e-4 in both modulated-convolution
  forms, and ``img_const_G`` (the non-EMA ``G``) does not match;
* the split contract (``SplitGeneratorContract``) for the fixture (W+ and Gaussian
  fit) and for random-weight ``orig`` / ``resnet`` / conditional / fp16-block networks;
* state layout, noise modes, class labels, errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch

from conftest import FIXTURES
from ilo_pl.modules.generators.nvlabs import NetworkPickleError, StyleGAN2ADAGenerator
from ilo_pl.stages import check_stage_names, paper_stages
from ilo_pl.testing.generators import SplitGeneratorContract

NV = FIXTURES / "nvlabs"
SHARED = NV / "stylegan2ada_tiny_shared.pkl"
LEGACY = NV / "stylegan2ada_tiny_shared_legacy.pkl"
TOL = 1e-4


def _fixture(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"missing fixture {path}: the shared fixtures must be at ../shared/fixtures/nvlabs")
    return path


@pytest.fixture(scope="module")
def ref() -> Dict[str, torch.Tensor]:
    return torch.load(_fixture(NV / "stylegan2ada_tiny_shared_reference.pt"), weights_only=True)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


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


def _random(**kw: object) -> StyleGAN2ADAGenerator:
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


class TestOrigContract(SplitGeneratorContract):
    batch = 2
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(architecture="orig").to(device)


class TestResnetContract(TestOrigContract):
    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(architecture="resnet").to(device)


class TestConditionalFp16Contract(TestOrigContract):
    """A conditional network with fp16 blocks (computed in float32 on the CPU), one class per problem."""

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _random(c_dim=5, num_fp16_res=2, class_label=[1, 3], fp16=True).to(device)


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


def test_class_labels() -> None:
    g = _random(c_dim=4, class_label=[0, 3])
    with pytest.raises(ValueError, match="conditional"):
        g.mapping(torch.randn(2, 16), None)
    with pytest.raises(ValueError, match="out of range"):
        _random(c_dim=4, class_label=7)
    with pytest.raises(ValueError, match="unconditional"):
        _random(class_label=1)
    c = g._labels_onehot(3, torch.device("cpu"))
    assert c.argmax(1).tolist() == [0, 3, 0]


def test_refuses_a_stylegan3_pickle() -> None:
    with pytest.raises(NetworkPickleError, match="StyleGAN3"):
        StyleGAN2ADAGenerator(_fixture(NV / "stylegan3t_tiny.pkl"))
