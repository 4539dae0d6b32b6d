"""Tests of :class:`~ilo_pl.modules.generators.nvlabs.StyleGAN3Generator`.

* conformance: the NVlabs StyleGAN3-T fixture snapshot (``../shared/fixtures/nvlabs``), loaded
  through ``load_generator(path)`` alone, reproduces every reference entry of
  ``stylegan3t_tiny_reference.pt`` to 1e-4, ``img_const_G`` (the non-EMA ``G``) does not
  match, and the trap in the embedded source never fires;
* the split contract (``SplitGeneratorContract``) at every split, batched (W+ and Gaussian fit);
* state layout, groups, the paper's schedule without noises, the R config's 2-D filter path, errors.

``configs/stylegan3`` through ``ilo-pl fit`` are tested in ``test_nvlabs_configs.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch

from ilo_pl.modules.generators import load_generator
from ilo_pl.modules.generators.nvlabs import NetworkPickleError, StyleGAN2ADAGenerator, StyleGAN3Generator
from ilo_pl.modules.generators.nvlabs.stylegan3 import filtered_lrelu
from ilo_pl.stages import check_stage_names, paper_stages
from ilo_pl.testing.generators import SplitGeneratorContract
from nvlabs_common import NV, TOL, nv_reference
from nvlabs_common import SG3_PKL as PKL
from nvlabs_common import max_err as _err
from nvlabs_common import nv_fixture as _fixture


@pytest.fixture(scope="module")
def ref() -> Dict[str, torch.Tensor]:
    return nv_reference("stylegan3t_tiny")


@pytest.fixture(scope="module")
def g() -> StyleGAN3Generator:
    return StyleGAN3Generator(_fixture(PKL))


def test_reproduces_every_reference_entry(ref: Dict[str, torch.Tensor], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    g = load_generator(_fixture(PKL))
    assert isinstance(g, StyleGAN3Generator)
    z, psi = ref["z"], float(ref["truncation_psi"])
    for name in ("num_ws", "w_dim", "z_dim", "c_dim", "img_resolution", "img_channels"):
        assert getattr(g, name) == int(ref[name]), name
    with torch.no_grad():
        errs = {
            "ws": _err(g.mapping(z, None, truncation_psi=1), ref["ws"]),
            "ws_trunc": _err(g.mapping(z, None, truncation_psi=psi), ref["ws_trunc"]),
            "img_const": _err(g(z, None, truncation_psi=1, noise_mode="const"), ref["img_const"]),
            "img_trunc": _err(g(z, None, truncation_psi=psi, noise_mode="const"), ref["img_trunc"]),
            "img_from_ws": _err(g.synthesis(ref["ws_custom"], noise_mode="const"), ref["img_from_ws"]),
        }
        print({k: f"{v:.2e}" for k, v in errs.items()})
        assert all(e < TOL for e in errs.values()), errs
        # G, not G_ema, made img_const_G: a loader that took G would match it (they differ by 0.42).
        assert _err(g(z, None, noise_mode="const"), ref["img_const_G"]) > 0.1
        # StyleGAN3 has no noise inputs: every noise mode renders the same.
        for mode in ("none", "random"):
            assert _err(g(z, None, noise_mode=mode), ref["img_const"]) < TOL
    assert not (tmp_path / "EMBEDDED_PICKLE_CODE_RAN").exists()


def test_taking_g_instead_of_g_ema_matches_img_const_g(ref: Dict[str, torch.Tensor], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    g = load_generator(_fixture(PKL), network="G")
    with torch.no_grad():
        assert _err(g(ref["z"], None), ref["img_const_G"]) < TOL
    assert not (tmp_path / "EMBEDDED_PICKLE_CODE_RAN").exists()


def test_split_state_renders_the_reference_image(g: StyleGAN3Generator, ref: Dict[str, torch.Tensor]) -> None:
    state = {"latent": ref["ws_custom"].clone()}
    with torch.no_grad():
        full = g.render(state, 0)
        assert _err(full, ref["img_from_ws"]) < TOL
        for k in range(g.num_splits + 1):
            # G2(G1(v)) == G(v) exactly (the same operations in the same order).
            assert torch.equal(g.render(g.advance(state, 0, k), k), full), k


class TestStyleGAN3Contract(SplitGeneratorContract):
    """The split contract of the StyleGAN3-T fixture snapshot in W+, batched."""

    batch = 3
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN3Generator:
        return StyleGAN3Generator(_fixture(PKL), mean_latent_samples=256).to(device)


class TestStyleGAN3GaussianFitContract(TestStyleGAN3Contract):
    def make_generator(self, device: torch.device) -> StyleGAN3Generator:
        return StyleGAN3Generator(_fixture(PKL), latent_space="gaussian_fit", gaussian_fit_samples=2000).to(device)


def test_state_layout_groups_and_schedule(g: StyleGAN3Generator) -> None:
    # input + L0..L6: 8 stages, one W+ row each; splits 0..7 (the last before the ToRGB layer).
    assert g.num_ws == 8 and g.num_splits == 7
    assert g.synthesis.layer_names == ["L0_36_32", "L1_36_32", "L2_52_32", "L3_52_27", "L4_52_16", "L5_32_16", "L6_32_3"]
    s = g.init_variables(2, torch.Generator().manual_seed(0))
    assert list(s) == ["latent"] and s["latent"].shape == (2, 8, 32)
    with torch.no_grad():
        shapes = {k: tuple(g.advance(s, 0, k)["h"].shape) for k in range(1, 8)}
    assert shapes == {1: (2, 32, 36, 36), 2: (2, 32, 36, 36), 3: (2, 32, 36, 36), 4: (2, 32, 52, 52),
                      5: (2, 27, 52, 52), 6: (2, 16, 52, 52), 7: (2, 16, 32, 32)}
    s3 = g.advance(s, 0, 3)
    assert list(s3) == ["h", "latent"] and s3["latent"].shape == (2, 5, 32)
    assert g.groups(3) == {"h": "state", "latent": "latent"} and g.groups(0) == {"latent": "latent"}
    assert g.sphere_variables(3) == {}
    stages = paper_stages(g, steps=(1, 1, 1, 1))
    check_stage_names(stages, g)
    assert [st.split for st in stages] == [0, 1, 3, 5]
    assert [list(st.free) for st in stages] == [["latent"]] + [["latent", "state"]] * 3


def test_gaussian_fit_rows_live_on_spheres() -> None:
    g = StyleGAN3Generator(_fixture(PKL), latent_space="gaussian_fit", gaussian_fit_samples=500)
    assert g.sphere_variables(2) == {"latent": (2,)}
    assert g.render_settings()["latent_space"] == "gaussian_fit"


def test_two_dimensional_filters_match_their_separable_form() -> None:
    """The R config's radial down filters are 2-D: the 2-D path follows the same conventions as the 1-D one."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 11)
    fu, fd = torch.rand(6) + 0.1, torch.rand(5) + 0.1  # asymmetric: a wrong flip or padding shows
    b = torch.randn(3)
    kw = dict(up=2, down=2, padding=[4, 3, 5, 2], clamp=1.5)
    one_d = filtered_lrelu(x, fu, fd, b, **kw)
    two_d = filtered_lrelu(x, fu, torch.outer(fd, fd), b, **kw)
    both_2d = filtered_lrelu(x, torch.outer(fu, fu), torch.outer(fd, fd), b, **kw)
    assert one_d.shape == two_d.shape == both_2d.shape
    assert _err(one_d, two_d) < 1e-5 and _err(one_d, both_2d) < 1e-5
    # Against a direct computation: zero insertion, pad, convolve (flipped filter), lrelu, filter, subsample.
    up = torch.zeros(2, 3, 22, 22)
    up[:, :, ::2, ::2] = x + b.reshape(1, -1, 1, 1)
    up = torch.nn.functional.pad(up, [4, 3, 5, 2])
    k = torch.outer(fu, fu).flip([0, 1]) * 4
    y = torch.nn.functional.conv2d(up, k.expand(3, 1, 6, 6), groups=3)
    y = (torch.nn.functional.leaky_relu(y, 0.2) * 2**0.5).clamp(-1.5, 1.5)
    y = torch.nn.functional.conv2d(y, torch.outer(fd, fd).flip([0, 1]).expand(3, 1, 5, 5), groups=3)[:, :, ::2, ::2]
    assert _err(one_d, y) < 1e-5


def test_errors_and_the_other_generator(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        StyleGAN3Generator()
    with pytest.raises(ValueError, match="latent_space"):
        StyleGAN3Generator(_fixture(PKL), latent_space="z")
    with pytest.raises(ValueError, match="unconditional"):
        StyleGAN3Generator(_fixture(PKL), class_label=1)
    with pytest.raises(NetworkPickleError, match="StyleGAN-2"):
        StyleGAN3Generator(_fixture(NV / "stylegan2ada_tiny_shared.pkl"))
    with pytest.raises(NetworkPickleError, match="StyleGAN3"):
        StyleGAN2ADAGenerator(_fixture(PKL))
    g = StyleGAN3Generator(_fixture(PKL))
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(torch.zeros(1, 7, 32))
    with pytest.raises(ValueError, match="lacks entries"):
        g.render({"latent": torch.zeros(1, 6, 32)}, 2)


@pytest.mark.parametrize("impl", ["fused", "unfused"])
def test_both_modconv_forms_reproduce_the_references(impl: str, ref: Dict[str, torch.Tensor]) -> None:
    g = StyleGAN3Generator(_fixture(PKL), modconv_impl=impl)
    assert all(layer.impl == impl for layer in g.synthesis.modules() if hasattr(layer, "magnitude_ema"))
    with torch.no_grad():
        assert _err(g(ref["z"], None, truncation_psi=1, noise_mode="const"), ref["img_const"]) < TOL
        assert _err(g.synthesis(ref["ws_custom"], noise_mode="const"), ref["img_from_ws"]) < TOL


def test_modconv_forms_agree_in_float64_with_gradients() -> None:
    """The two forms of modulated_conv2d_sg3 are the same function (values and gradients)."""
    from ilo_pl.modules.generators.nvlabs.stylegan3 import modulated_conv2d_sg3

    gen = torch.Generator().manual_seed(0)
    for demodulate in (True, False):
        x = torch.randn(3, 5, 6, 6, dtype=torch.float64, generator=gen)
        w = torch.randn(4, 5, 3, 3, dtype=torch.float64, generator=gen)
        s = torch.randn(3, 5, dtype=torch.float64, generator=gen)
        gain = torch.tensor(0.7, dtype=torch.float64)
        outs, grads = [], []
        for impl in ("fused", "unfused"):
            xi, si = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
            y = modulated_conv2d_sg3(xi, w, si, demodulate=demodulate, padding=2, input_gain=gain, impl=impl)
            y.square().sum().backward()
            outs.append(y.detach())
            grads.append((xi.grad, si.grad))
        assert outs[0].dtype == torch.float64  # float64 in, float64 throughout
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        # batch equals per sample in each form
        one = modulated_conv2d_sg3(x[1:2], w, s[1:2], demodulate=demodulate, padding=2, input_gain=gain, impl="unfused")
        torch.testing.assert_close(one, outs[1][1:2], rtol=1e-10, atol=1e-10)
    # float32: the forms agree to float32 rounding
    x32, w32, s32 = x.float(), w.float(), s.float()
    torch.testing.assert_close(modulated_conv2d_sg3(x32, w32, s32, padding=2, impl="fused"),
                               modulated_conv2d_sg3(x32, w32, s32, padding=2, impl="unfused"), rtol=1e-5, atol=1e-5)
