"""Tests of the StyleGAN-2 generator (``ilo_pl.modules.generators.stylegan2``).

* conformance: the tiny checkpoint of the reference port, loaded by path only,
  reproduces every reference image; the config-f 1024 generator has exactly
  the reference key -> shape map;
* the split contract (``ilo_pl.testing.generators.SplitGeneratorContract``:
  ``G2(G1(v)) == G(v)`` at every split, batch == per-sample, seeded init,
  frozen, groups, sphere entries, autocast), in both latent spaces and on every
  ``device``; the state layout per split; float64 gradcheck through G2;
* ILO variables: latent spaces, init, sphere variables, the paper schedule,
  and a live geodesic term at every split;
* the two forms of the modulated convolution (``modconv_impl``: fused and
  unfused) against the reference images and each other, gradients included,
  and the ``"auto"`` rule;
* loader and argument errors;
* ILO on the fixture generator through ``ilo_pl.api.solve``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, TINY
from ilo_pl.losses.base import GeodesicLoss, LossContext, MeasurementLoss
from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.modules.generators.stylegan2 import (
    ModulatedConv2d,
    StyleGAN2Generator,
    infer_architecture,
    read_checkpoint,
    resolve_modconv_impl,
)
from ilo_pl.operators.base import Identity
from ilo_pl.stages import PAPER_RADII, paper_stages
from ilo_pl.testing.generators import SplitGeneratorContract

KEYS_1024 = FIXTURES / "stylegan2_config_f_1024_keys.json"


def _fixture(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(
            f"missing conformance fixture {path}: the shared fixtures must be at ../shared/fixtures "
            "relative to the repository root (see ../shared/README.md)"
        )
    return path


@pytest.fixture(scope="module")
def tiny_ckpt() -> dict:
    return torch.load(_fixture(TINY), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ref(tiny_ckpt: dict) -> dict:
    return tiny_ckpt["reference"]


@pytest.fixture(scope="module")
def g() -> StyleGAN2Generator:
    return StyleGAN2Generator(checkpoint=_fixture(TINY))


@pytest.fixture(scope="module")
def g_fit() -> StyleGAN2Generator:
    return StyleGAN2Generator(checkpoint=_fixture(TINY), latent_space="gaussian_fit", gaussian_fit_samples=20_000)


# ----------------------------------------------------------------------------- conformance
def test_loader_infers_the_architecture(g: StyleGAN2Generator, tiny_ckpt: dict) -> None:
    cfg = tiny_ckpt["config"]
    assert (g.size, g.style_dim, g.n_mlp) == (cfg["size"], cfg["style_dim"], cfg["n_mlp"])
    assert g.channels == {int(k): v for k, v in cfg["channels"].items()}
    assert (g.num_layers, g.n_latent, g.num_splits, g.image_shape) == (7, 8, 6, (3, 32, 32))
    assert isinstance(g, SplitGenerator)
    assert not any(p.requires_grad for p in g.parameters())
    # Same keys in the same order as the reference port's g_ema.
    assert list(g.state_dict()) == list(tiny_ckpt["g_ema"])


def test_reproduces_reference_images(g: StyleGAN2Generator, ref: dict) -> None:
    z, noises = ref["z"], list(ref["noises"])
    atol = 1e-4
    with torch.no_grad():
        image, latents = g([z], noise=noises, randomize_noise=False, return_latents=True)
        torch.testing.assert_close(image, ref["image"], atol=atol, rtol=0)
        torch.testing.assert_close(latents, ref["w_plus"], atol=atol, rtol=0)

        image, latents = g([z], randomize_noise=False)
        assert latents is None
        torch.testing.assert_close(image, ref["image_buffer_noise"], atol=atol, rtol=0)

        mean_latent = g.get_latent(ref["mean_latent_z"]).mean(0, keepdim=True)
        torch.testing.assert_close(mean_latent, ref["mean_latent"], atol=1e-5, rtol=0)
        image, _ = g(
            [z], noise=noises, randomize_noise=False, truncation=0.7, truncation_latent=ref["mean_latent"]
        )
        torch.testing.assert_close(image, ref["image_truncation_0.7"], atol=atol, rtol=0)

        image, _ = g([ref["w_plus_input"]], noise=noises, randomize_noise=False, input_is_latent=True)
        torch.testing.assert_close(image, ref["image_from_w_plus_input"], atol=atol, rtol=0)

        image, _ = g([z, ref["z2"]], noise=noises, randomize_noise=False, inject_index=3)
        torch.testing.assert_close(image, ref["image_mix_inject_3"], atol=atol, rtol=0)


def test_split_protocol_reproduces_reference_image(g: StyleGAN2Generator, ref: dict) -> None:
    """The state-dict path (render at split 0) is the same network as the port-style call."""
    state: Dict[str, torch.Tensor] = {"latent": ref["w_plus"]}
    for j, n in enumerate(ref["noises"]):
        state[f"noise_{j}"] = n.expand(2, -1, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(g(state), ref["image"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g.render(g.advance(state, 0, 4), 4), ref["image"], atol=1e-4, rtol=0)


def test_config_f_1024_key_map() -> None:
    want = json.loads(_fixture(KEYS_1024).read_text())
    with torch.device("meta"):  # no memory, no init cost
        big = StyleGAN2Generator(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2)
    got = {k: list(v.shape) for k, v in big.state_dict().items()}
    assert got == want
    assert list(got) == list(want)
    assert (big.num_layers, big.n_latent, big.num_splits) == (17, 18, 16)


# ----------------------------------------------------------------------------- split contract
class TestStyleGAN2Contract(SplitGeneratorContract):
    """The split contract of the fixture generator in W+ (one test per property and device)."""

    batch = 3
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN2Generator:
        return StyleGAN2Generator(checkpoint=_fixture(TINY)).to(device)


class TestStyleGAN2GaussianFitContract(TestStyleGAN2Contract):
    """The same contract in PULSE's Gaussian-fit latent space (latent rows on spheres)."""

    def make_generator(self, device: torch.device) -> StyleGAN2Generator:
        gen = StyleGAN2Generator(checkpoint=_fixture(TINY), latent_space="gaussian_fit", gaussian_fit_samples=20_000)
        return gen.to(device)


def test_state_layout_per_split(g: StyleGAN2Generator) -> None:
    state = g.init_variables(2, torch.Generator().manual_seed(1))
    assert state["latent"].shape == (2, 8, 32)
    assert [tuple(state[f"noise_{j}"].shape) for j in range(7)] == [
        (2, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)
    ]
    assert g.groups(0) == {"latent": "latent", **{f"noise_{j}": "noise" for j in range(7)}}
    # (resolution of h, resolution of skip) after conv_{k-1}; skip lags h after an upsampling conv.
    res = {1: (4, 4), 2: (8, 4), 3: (8, 8), 4: (16, 8), 5: (16, 16), 6: (32, 16)}
    with torch.no_grad():
        for k in range(1, g.num_splits + 1):
            s = g.advance(state, 0, k)
            assert s["h"].shape[-1] == res[k][0] and s["skip"].shape[1:] == (3, res[k][1], res[k][1])
            assert s["latent"].shape == (2, 8 - k, 32)
            torch.testing.assert_close(s["latent"], state["latent"][:, k:])
            assert sorted(n for n in s if n.startswith("noise_")) == sorted(f"noise_{j}" for j in range(k, 7))
            assert g.groups(k)["h"] == "state" and g.groups(k)["skip"] == "skip"
            # Remaining noises are passed through untouched (stable names).
            assert s["noise_6"] is state["noise_6"]


def test_init_draws_each_noise_and_w_plus_row_on_its_own(g: StyleGAN2Generator) -> None:
    # (Seeded, reproducible draws are the contract's "init" property.)
    a = g.init_variables(2, torch.Generator().manual_seed(7))
    assert not torch.allclose(a["noise_3"][0], a["noise_3"][1])
    assert not torch.allclose(a["latent"][0, 0], a["latent"][0, 1])  # rows differ: geodesic term is live


def test_init_truncation_zero_starts_at_the_average_latent(tiny_ckpt: dict) -> None:
    gen = StyleGAN2Generator(checkpoint=_fixture(TINY), init_truncation=0.0, mean_latent_samples=512)
    state = gen.init_variables(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(state["latent"], gen.average_latent().expand(2, 8, -1))
    z = torch.randn(512, 32, generator=torch.Generator().manual_seed(gen.stats_seed))
    with torch.no_grad():
        torch.testing.assert_close(gen.average_latent(), gen.style(z).mean(0, keepdim=True), atol=1e-5, rtol=0)


def test_gaussian_fit_proxy_inverts_the_last_leaky_relu(g_fit: StyleGAN2Generator) -> None:
    mu, sigma = g_fit.gaussian_fit()
    assert mu.shape == sigma.shape == (32,) and (sigma > 0).all()
    with torch.no_grad():
        w = g_fit.get_latent(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)))
        v = (F.leaky_relu(w, 5.0) - mu) / sigma  # the proxy of w
        torch.testing.assert_close(g_fit.latent_to_w(v[:, None]), w[:, None], atol=1e-5, rtol=0)
        # The proxy of mapping samples is standardised (that is what the fit is for).
        many = g_fit.get_latent(torch.randn(4000, 32, generator=torch.Generator().manual_seed(1)))
        proxy = (F.leaky_relu(many, 5.0) - mu) / sigma
    assert proxy.mean(0).abs().max() < 0.15 and (proxy.std(0) - 1).abs().max() < 0.15


def test_sphere_variables(g: StyleGAN2Generator, g_fit: StyleGAN2Generator) -> None:
    assert g.sphere_variables(0) == {f"noise_{j}": (1, 2, 3) for j in range(7)}
    assert g.sphere_variables(4) == {f"noise_{j}": (1, 2, 3) for j in (4, 5, 6)}
    assert g_fit.sphere_variables(2) == {"latent": (2,), **{f"noise_{j}": (1, 2, 3) for j in range(2, 7)}}
    state = g_fit.init_variables(2, torch.Generator().manual_seed(0))
    assert state["latent"].shape == (2, 8, 32)  # the Gaussian proxy, not W


def test_gradcheck_float64_through_g2(tiny_ckpt: dict) -> None:
    gen = StyleGAN2Generator(checkpoint=_fixture(TINY)).double()
    state = {k: v.double() for k, v in gen.init_variables(1, torch.Generator().manual_seed(3)).items()}
    k = gen.num_splits
    with torch.no_grad():
        mid = gen.advance(state, 0, k)
    h = mid["h"].clone().requires_grad_(True)
    lat = mid["latent"].clone().requires_grad_(True)

    def g2(h_: torch.Tensor, lat_: torch.Tensor) -> torch.Tensor:
        return gen.render({**mid, "h": h_, "latent": lat_}, k)

    assert torch.autograd.gradcheck(g2, (h, lat), fast_mode=True)


# ----------------------------------------------------------------------------- modulated convolution forms
FORMS = ("fused", "unfused")


@pytest.mark.parametrize("impl", FORMS)
def test_both_modconv_forms_reproduce_the_reference_images(ref: dict, impl: str) -> None:
    gen = StyleGAN2Generator(checkpoint=_fixture(TINY), modconv_impl=impl)
    assert {m.impl for m in gen.modules() if isinstance(m, ModulatedConv2d)} == {impl}
    z, noises = ref["z"], list(ref["noises"])
    with torch.no_grad():
        for batch in (1, 2):  # batch 1 is one ordinary convolution in the fused form, batch 2 a grouped one
            zb, nb = z[:batch], [n.expand(batch, -1, -1, -1) for n in noises]
            image, _ = gen([zb], noise=nb, randomize_noise=False)
            torch.testing.assert_close(image, ref["image"][:batch], atol=1e-4, rtol=0)
            image, _ = gen([ref["w_plus_input"][:batch]], noise=nb, randomize_noise=False, input_is_latent=True)
            torch.testing.assert_close(image, ref["image_from_w_plus_input"][:batch], atol=1e-4, rtol=0)


def _render_with_grads(gen: StyleGAN2Generator, state: Dict[str, torch.Tensor], split: int):  # noqa: ANN202
    """The image at ``split`` and the gradients of a fixed linear functional of it w.r.t. every state entry."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in state.items()}
    image = gen.render(leaves, split)
    probe = torch.linspace(-1, 1, image.numel(), dtype=image.dtype).view_as(image)
    grads = torch.autograd.grad((image * probe).sum(), list(leaves.values()))
    return image.detach(), dict(zip(leaves, grads))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
def test_modconv_forms_agree_with_gradients(dtype: torch.dtype, tol: float, batch: int) -> None:
    """Images and gradients w.r.t. latents, intermediate states (h, skip) and noises, at splits 0, 1 (after
    the 4x4 conv and its ToRGB) and 2 (after an upsampling conv); gradients relative to their largest entry."""
    gens = {impl: StyleGAN2Generator(checkpoint=_fixture(TINY), modconv_impl=impl).to(dtype) for impl in FORMS}
    v = {k: t.to(dtype) for k, t in gens["fused"].init_variables(batch, torch.Generator().manual_seed(4)).items()}
    for split in (0, 1, 2):
        with torch.no_grad():
            state = gens["unfused"].advance(v, 0, split)
        (img_f, grad_f), (img_u, grad_u) = (_render_with_grads(gens[i], state, split) for i in FORMS)
        torch.testing.assert_close(img_f, img_u, atol=tol, rtol=0)
        assert set(grad_f) == set(state) and {"latent", "noise_6"} <= set(grad_f)
        for name in grad_f:
            scale = grad_u[name].abs().max()
            assert scale > 0, (split, name)
            torch.testing.assert_close(grad_f[name] / scale, grad_u[name] / scale, atol=tol, rtol=0, msg=f"{split} {name}")


@pytest.mark.parametrize("impl", FORMS)
@pytest.mark.parametrize("kind", ["conv", "upsample", "to_rgb"])
def test_modconv_layer_gradcheck_float64(impl: str, kind: str) -> None:
    """Each form is differentiable w.r.t. the input and the style (float64 gradcheck), upsampling and ToRGB's
    non-demodulated 1x1 convolution included, at batch 2 (the fused form's grouped convolution)."""
    torch.manual_seed(0)
    if kind == "to_rgb":
        layer = ModulatedConv2d(4, 3, 1, 5, demodulate=False, impl=impl)
    else:
        layer = ModulatedConv2d(4, 3, 3, 5, upsample=kind == "upsample", impl=impl)
    layer = layer.double().requires_grad_(False)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    style = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, style))
    other = ModulatedConv2d(layer.in_channel, layer.out_channel, layer.kernel_size, 5, demodulate=layer.demodulate,
                            upsample=layer.upsample, impl=FORMS[impl == "fused"]).double()
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, style), other(x, style), atol=1e-12, rtol=0)


def test_modconv_auto_rule_and_errors() -> None:
    assert resolve_modconv_impl("auto", 1, style_grad=False) == "fused"
    assert resolve_modconv_impl("auto", 1, style_grad=True) == "unfused"
    assert resolve_modconv_impl("auto", 2, "cpu", style_grad=False) == "unfused"
    # Callers that do not say whether the styles need a gradient: whenever autograd records.
    assert resolve_modconv_impl("auto", 1, torch.device("cpu")) == "unfused"
    with torch.no_grad():
        assert resolve_modconv_impl("auto", 1, torch.device("cpu")) == "fused"
    for impl in FORMS:
        assert resolve_modconv_impl(impl, 1, style_grad=True) == resolve_modconv_impl(impl, 8, style_grad=False) == impl
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'fused', 'unfused'; got 'grouped'"):
        resolve_modconv_impl("grouped", 1)
    with pytest.raises(ValueError, match="modconv_impl.*must be one of 'auto', 'fused', 'unfused'; got True"):
        StyleGAN2Generator(checkpoint=_fixture(TINY), modconv_impl=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl must be one of"):
        ModulatedConv2d(4, 4, 3, 4, impl="fast")


def test_modconv_auto_runs_the_form_it_picks(g: StyleGAN2Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"auto"``: fused for one sample without style gradients; unfused for batches and whenever the styles
    (the latent) need a gradient, as in every ILO step that frees the latent."""
    calls = []
    for form in FORMS:
        original = getattr(ModulatedConv2d, f"_{form}")

        def spy(self, x, s, _form=form, _original=original):  # noqa: ANN001, ANN202
            calls.append(_form)
            return _original(self, x, s)

        monkeypatch.setattr(ModulatedConv2d, f"_{form}", spy)
    assert g.modconv_impl == "auto"
    layers = sum(isinstance(m, ModulatedConv2d) for m in g.modules())  # 7 convs, 4 ToRGBs
    v1, v2 = g.init_variables(1), g.init_variables(2)
    with torch.no_grad():
        g.render(v1, 0)
        assert calls == ["fused"] * layers
        calls.clear()
        g.render(v2, 0)
        assert calls == ["unfused"] * layers
    calls.clear()
    g.render({**v1, "latent": v1["latent"].clone().requires_grad_(True)}, 0)
    assert calls == ["unfused"] * layers
    calls.clear()
    g.render({**v1, "noise_3": v1["noise_3"].clone().requires_grad_(True)}, 0)  # the latent fixed: no style gradient
    assert calls == ["fused"] * layers


def test_modconv_impl_is_settable_and_not_part_of_the_identity(g: StyleGAN2Generator) -> None:
    """The forms render the same image up to float rounding, so a solution saved with one renders with the other."""
    other = StyleGAN2Generator(checkpoint=_fixture(TINY), modconv_impl="fused")
    assert other.identity() == g.identity() and "modconv_impl" not in str(g.render_settings())
    other.modconv_impl = "unfused"
    assert other.modconv_impl == "unfused"
    assert {m.impl for m in other.modules() if isinstance(m, ModulatedConv2d)} == {"unfused"}
    assert "impl='unfused'" in repr(other.conv1.conv)
    with pytest.raises(ValueError, match="must be one of"):
        other.modconv_impl = "none"
    assert other.modconv_impl == "unfused"


class TestStyleGAN2FusedContract(TestStyleGAN2Contract):
    """The split contract with the fused form at every batch size (grouped convolutions)."""

    def make_generator(self, device: torch.device) -> StyleGAN2Generator:
        return StyleGAN2Generator(checkpoint=_fixture(TINY), modconv_impl="fused").to(device)


# ----------------------------------------------------------------------------- ILO variables
def _geodesic(gen: StyleGAN2Generator, state: Dict[str, torch.Tensor], split: int) -> torch.Tensor:
    image = gen.render(state, split)
    ctx = LossContext(
        image=image, measured=image, observation=image.detach(), operator=Identity(),
        state=state, groups=gen.groups(split), split=split,
    )
    return GeodesicLoss()(ctx)


@pytest.mark.parametrize("space", ["w+", "gaussian_fit"])
def test_geodesic_term_is_live_at_every_split_and_stage(
    g: StyleGAN2Generator, g_fit: StyleGAN2Generator, space: str
) -> None:
    gen = g if space == "w+" else g_fit
    init = gen.init_variables(2, torch.Generator().manual_seed(5))
    stage_splits = [st.split for st in paper_stages(gen)]
    for k in sorted(set(range(gen.num_splits + 1)) | set(stage_splits)):
        with torch.no_grad():
            state = dict(gen.advance(init, 0, k))
        state["latent"] = state["latent"].clone().requires_grad_(True)
        assert state["latent"].shape[1] >= 2
        loss = _geodesic(gen, state, k)
        assert loss.shape == (2,) and (loss > 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), state["latent"])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def _authors_geocross(latent: torch.Tensor) -> torch.Tensor:
    """The ILO authors' ``loss_geocross`` (PULSE code), written out per sample, in float64.

    Per pair of rows ``2 * atan2(|x - y|, |x + y|)`` (the angle, for rows of
    equal norm), squared, times 512, averaged over the full N x N matrix
    (diagonal included), divided by 8.
    """
    x = latent.double()
    n = x.shape[1]
    out = []
    for b in range(x.shape[0]):
        total = x.new_zeros(())
        for i in range(n):
            for j in range(n):
                a = (x[b, i] - x[b, j]).norm()
                c = (x[b, i] + x[b, j]).norm()
                total = total + (2 * torch.atan2(a, c)) ** 2 * 512
        out.append(total / (n * n) / 8.0)
    return torch.stack(out)


def _equal_norm_rows(batch: int, rows: int, dim: int, seed: int) -> torch.Tensor:
    w = torch.randn(batch, rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (w / w.norm(dim=-1, keepdim=True) * dim**0.5).float()  # on the sphere, as with sphere: true


def _geodesic_of(latent: torch.Tensor, **kwargs: str) -> torch.Tensor:
    ctx = LossContext(
        image=torch.zeros(latent.shape[0], 3, 4, 4), measured=torch.zeros(1), observation=torch.zeros(1),
        operator=Identity(), state={"latent": latent}, groups={"latent": "latent"}, split=0,
    )
    return GeodesicLoss(**kwargs)(ctx)


@pytest.mark.parametrize("rows", [18, 13])
def test_geodesic_default_is_the_authors_normalisation(rows: int) -> None:
    latent = _equal_norm_rows(2, rows, 512, seed=rows)
    want = _authors_geocross(latent)
    torch.testing.assert_close(_geodesic_of(latent).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_geodesic_of(latent, reduction="authors").double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [18, 13])
def test_geodesic_pair_sum_option_is_the_sum_over_pairs(rows: int) -> None:
    latent = _equal_norm_rows(2, rows, 512, seed=100 + rows)
    u = latent.double() / latent.double().norm(dim=-1, keepdim=True)
    want = torch.stack([
        sum(torch.arccos((u[b, i] * u[b, j]).sum().clamp(-1, 1)) ** 2 for i in range(rows) for j in range(i + 1, rows))
        for b in range(2)
    ])
    got = _geodesic_of(latent, reduction="pair_sum").double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The ratio the README's weight 0.01 hinged on: N^2 / 128 (2.53 at 18 rows, 1.32 at 13).
    ratio = got / _geodesic_of(latent).double()
    torch.testing.assert_close(ratio, torch.full_like(ratio, rows**2 / 128), rtol=1e-5, atol=0)


def test_geodesic_unknown_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown GeodesicLoss reduction 'mean'.*'authors'.*'pair_sum'"):
        GeodesicLoss(reduction="mean")


def test_stage_radius_reads_the_generator_groups() -> None:
    """Group keys (GROUPS, "skip" included) give a group's radius; an entry-name pattern wins over it."""
    from ilo_pl.modules.generators.base import GROUPS
    from ilo_pl.stages import Stage

    assert GROUPS == ("state", "latent", "noise", "skip", "condition")
    st = Stage(split=1, steps=1, free=["state", "skip"], radius={"skip": 3.0, "sk*": 1.0, "state": 5.0})
    assert st.radius_of("skip", "skip") == 1.0  # names before groups, as for every other group
    assert st.radius_of("h", "state") == 5.0
    assert Stage(split=1, steps=1, radius={"skip": 3.0}).radius_of("skip", "skip") == 3.0


def test_paper_stages(g: StyleGAN2Generator) -> None:
    with torch.device("meta"):
        big = StyleGAN2Generator(size=1024, style_dim=512, n_mlp=8)
    stages = paper_stages(big)
    assert [s.split for s in stages] == [0, 1, 3, 5]
    assert [s.steps for s in stages] == [300, 200, 200, 100]
    assert all(s.lr == 0.1 for s in stages)
    assert stages[0].free == ["latent"] + [f"noise_{i}" for i in range(5)]
    assert stages[1].free == ["latent", "state"] + [f"noise_{i}" for i in range(1, 7)]
    assert stages[3].free == ["latent", "state"] + [f"noise_{i}" for i in range(5, 11)]
    assert [s.radius["noise"] for s in stages] == list(PAPER_RADII["noise"]) == [300, 2000, 2000, 4000]
    assert [s.radius["latent"] for s in stages] == [300, 500, 1000, 2000]
    assert "state" not in stages[0].radius
    assert [s.radius["state"] for s in stages[1:]] == [500, 1000, 2000]
    # Stage semantics as the engine reads them.
    assert stages[2].is_free("noise_8", "noise") and not stages[2].is_free("noise_9", "noise")
    assert stages[2].radius_of("h", "state") == 1000
    # On the tiny generator the freed noises are capped at its 7 layers.
    assert paper_stages(g)[3].free[-1] == "noise_6"
    # "state" is the feature map only: the RGB skip is carried, never freed, and has no radius.
    for st in stages[1:]:
        groups = big.groups(st.split)
        assert st.is_free("h", groups["h"]) and not st.is_free("skip", groups["skip"])
        assert st.radius_of("skip", groups["skip"]) == float("inf")


def test_paper_stages_errors(g: StyleGAN2Generator) -> None:
    with pytest.raises(ValueError, match=r"radii\['latent'\] has 2 values for 4 stages"):
        paper_stages(g, radii={**PAPER_RADII, "latent": (1.0, 2.0)})
    with pytest.raises(ValueError, match="radii lacks group 'state'"):
        paper_stages(g, radii={"noise": PAPER_RADII["noise"], "latent": PAPER_RADII["latent"]})
    with pytest.raises(ValueError, match="split 9 is out of range"):
        paper_stages(g, splits=(0, 1, 3, 9))
    with pytest.raises(ValueError, match="splits has 2 entries for 4 stages"):
        paper_stages(g, splits=(0, 1))
    with pytest.raises(ValueError, match="must not decrease"):
        paper_stages(g, splits=(0, 3, 1, 5))


# ----------------------------------------------------------------------------- loader & errors
def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope\.pt does not exist.*--model\.generator"):
        StyleGAN2Generator(checkpoint=tmp_path / "nope.pt")


def test_dcgan_checkpoint_is_rejected_with_key_names(tmp_path: Path) -> None:
    from ilo_pl.modules.generators.dcgan import DCGANGenerator

    sd = DCGANGenerator(weights="random").state_dict()
    torch.save(sd, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"missing keys \[input\.input.*unexpected keys \[main\.0\.weight"):
        StyleGAN2Generator(checkpoint=tmp_path / "bare.pt")
    torch.save({"netG_state_dict": sd}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match=r"has no 'g_ema' entry \(top-level keys: \[netG_state_dict\]\)"):
        StyleGAN2Generator(checkpoint=tmp_path / "wrapped.pt")


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path: Path, tiny_ckpt: dict) -> None:
    sd = dict(tiny_ckpt["g_ema"])
    del sd["convs.3.noise.weight"]
    sd["convs.3.conv.modulation.weight"] = sd["convs.3.conv.modulation.weight"][:, :16]
    sd["convs.3.extra"] = torch.zeros(1)
    torch.save({"g_ema": sd}, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as info:
        StyleGAN2Generator(checkpoint=tmp_path / "broken.pt")
    msg = str(info.value)
    assert "missing keys ['convs.3.noise.weight']" in msg
    assert "unexpected keys ['convs.3.extra']" in msg
    assert "mis-shaped keys convs.3.conv.modulation.weight (16, 16) != (16, 32)" in msg


def test_unrelated_top_level_keys_are_ignored(tmp_path: Path, tiny_ckpt: dict, ref: dict) -> None:
    ckpt = {
        "g_ema": tiny_ckpt["g_ema"],
        "g": tiny_ckpt["g_ema"],
        "d": {"convs.0.0.weight": torch.zeros(1)},
        "g_optim": {"state": {}, "param_groups": []},
        "latent_avg": torch.zeros(32),
        "args": argparse.Namespace(size=32, iter=10),  # what the port's train.py saves
    }
    torch.save(ckpt, tmp_path / "train.pt")
    gen = StyleGAN2Generator.from_checkpoint(tmp_path / "train.pt")
    with torch.no_grad():
        image, _ = gen([ref["z"]], noise=list(ref["noises"]), randomize_noise=False)
    torch.testing.assert_close(image, ref["image"], atol=1e-4, rtol=0)


def test_read_checkpoint_and_infer_architecture(tiny_ckpt: dict) -> None:
    sd = read_checkpoint(_fixture(TINY))
    assert infer_architecture(sd) == {
        "size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}
    }
    with torch.device("meta"):
        big = StyleGAN2Generator(size=256, style_dim=64, n_mlp=3, channel_multiplier=1)
    assert infer_architecture(big.state_dict())["channels"] == {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64
    }


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"size=64 contradicts checkpoint .* \(size=32\)"):
        StyleGAN2Generator(checkpoint=_fixture(TINY), size=64)
    with pytest.raises(ValueError, match="needs a `checkpoint` path, or .* size, style_dim and n_mlp"):
        StyleGAN2Generator(size=32)
    with pytest.raises(ValueError, match=r"latent_space must be one of \('w\+', 'gaussian_fit'\)"):
        StyleGAN2Generator(checkpoint=_fixture(TINY), latent_space="z")
    with pytest.raises(ValueError, match="size must be a power of two >= 8"):
        StyleGAN2Generator(size=48, style_dim=8, n_mlp=1)
    with pytest.raises(ValueError, match=r"channel table lacks resolutions \[16\]"):
        StyleGAN2Generator(size=16, style_dim=8, n_mlp=1, channels={4: 8, 8: 8})


def test_state_and_call_errors(g: StyleGAN2Generator) -> None:
    state = g.init_variables(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"state at split 2 lacks entries \['h', 'skip'\]"):
        g.render(state, 2)
    with pytest.raises(ValueError, match=r"state\['latent'\] at split 0 must be \[B, 8, 32\]"):
        g.render({**state, "latent": state["latent"][:, :3]}, 0)
    with pytest.raises(ValueError, match="split 7 is out of range .* valid split points are 0..6"):
        g.advance(state, 0, 7)
    with pytest.raises(ValueError, match="cannot advance from split 3 back to split 1"):
        g.advance(g.advance(state, 0, 3), 3, 1)
    with pytest.raises(TypeError, match="styles must be a list of tensors"):
        g(torch.randn(1, 32))
    with pytest.raises(ValueError, match="truncation < 1 needs truncation_latent"):
        g([torch.randn(1, 32)], truncation=0.5)
    with pytest.raises(ValueError, match="noise must hold 7 maps"):
        g([torch.randn(1, 32)], noise=[None] * 3)


def test_randomize_noise_draws_fresh_noise(g: StyleGAN2Generator) -> None:
    z = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, _ = g([z])
        b, _ = g([z])
        c, _ = g([z], randomize_noise=False)
        d, _ = g([z], randomize_noise=False)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)


def test_public_names_keep_their_import_paths(g: StyleGAN2Generator) -> None:
    """The package split (layers, checkpoint, generator) and the schedule's move keep the old imports."""
    import pickle

    import ilo_pl.modules.generators as generators
    import ilo_pl.modules.generators.stylegan2 as sg2
    from ilo_pl import stages
    from ilo_pl.modules.generators.stylegan2 import checkpoint, layers

    assert generators.StyleGAN2Generator is sg2.StyleGAN2Generator is StyleGAN2Generator
    assert generators.paper_stages is sg2.paper_stages is stages.paper_stages
    assert sg2.PAPER_RADII is stages.PAPER_RADII
    assert sg2.read_checkpoint is checkpoint.read_checkpoint and sg2.ModulatedConv2d is layers.ModulatedConv2d
    assert all(hasattr(sg2, name) for name in sg2.__all__)
    # Solutions record the class by this path (identity()); the ones saved before the split must still render.
    assert g.identity()["class"] == "ilo_pl.modules.generators.stylegan2.StyleGAN2Generator"
    assert pickle.loads(pickle.dumps(StyleGAN2Generator)) is StyleGAN2Generator


def test_built_from_a_config_by_class_path(tmp_path: Path) -> None:
    """How configs and the CLI name the generator (jsonargparse instantiates classes only)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--generator", type=SplitGenerator)
    spec = {
        "class_path": "ilo_pl.modules.generators.stylegan2.StyleGAN2Generator",
        "init_args": {"checkpoint": str(_fixture(TINY)), "latent_space": "gaussian_fit", "modconv_impl": "unfused"},
    }
    cfg = parser.instantiate_classes(parser.parse_object({"generator": spec}))
    assert isinstance(cfg.generator, StyleGAN2Generator) and cfg.generator.latent_space == "gaussian_fit"
    assert cfg.generator.modconv_impl == "unfused"
    spec["init_args"]["checkpoint"] = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        parser.instantiate_classes(parser.parse_object({"generator": spec}))


# ----------------------------------------------------------------------------- ILO end to end
ILO_STEPS = (100, 70, 70, 60)  # paper_stages' splits 0, 1, 3, 5; 300 steps in all


def _solve(gen: StyleGAN2Generator, x: torch.Tensor, stages: list):  # noqa: ANN202
    from ilo_pl.api import solve

    return solve(
        gen, Identity(), x, stages,
        losses={"mse": MeasurementLoss(), "geodesic": GeodesicLoss()},
        loss_weights={"mse": 1.0, "geodesic": 0.01},
    )


def test_ilo_recovers_an_in_range_image(g: StyleGAN2Generator) -> None:
    from ilo_pl.metrics import image_metrics

    truth = g.init_variables(1, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        x = g(truth)
    result = _solve(g, x, paper_stages(g, steps=ILO_STEPS))
    metrics = image_metrics(result.images, x)
    assert metrics["psnr"].item() > 35.0, metrics
    assert result.solutions[0].split in (0, 1, 3, 5)


def test_ilo_beats_csgm_on_an_out_of_range_image(g: StyleGAN2Generator) -> None:
    truth = g.init_variables(1, torch.Generator().manual_seed(1234))
    k = 3
    with torch.no_grad():
        mid = g.advance(truth, 0, k)
        rng = torch.Generator().manual_seed(99)
        h = mid["h"]
        # A sparse edit of the intermediate activation: outside the range of G.
        mask = (torch.rand(h.shape, generator=rng) < 0.03).to(h.dtype)
        delta = mask * torch.randn(h.shape, generator=rng) * 3 * h.std()
        x = g.render({**mid, "h": h + delta}, k)
    ilo = _solve(g, x, paper_stages(g, steps=ILO_STEPS))
    csgm = _solve(g, x, paper_stages(g, steps=(sum(ILO_STEPS),)))  # stage 0 only, same step count
    mse_ilo = (ilo.images - x).pow(2).mean().item()
    mse_csgm = (csgm.images - x).pow(2).mean().item()
    assert mse_ilo * 2 <= mse_csgm, (mse_ilo, mse_csgm)


# ----------------------------------------------------------------------------- configs
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "stylegan2").glob("ffhq1024_*.yaml"))


def test_there_are_ffhq1024_configs() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"ffhq1024_inpainting_box", "ffhq1024_superres", "ffhq1024_denoising"} <= names


#: Loss weights of each shipped config, as the paper: LPIPS where its experiments use it (not for
#: compressed sensing, whose code uses MSE only, nor below 20% observed pixels, its appendix).
CONFIG_LOSSES = {
    "ffhq1024_inpainting_box": {"mse": 1.0, "lpips": 1.0, "geodesic": 0.01},
    "ffhq1024_inpainting_random": {"mse": 1.0, "geodesic": 0.01},
    "ffhq1024_superres": {"mse": 1.0, "lpips": 1.0, "geodesic": 0.01},
    "ffhq1024_denoising": {"mse": 1.0, "lpips": 1.0, "geodesic": 0.01},
    "ffhq1024_compressed_sensing": {"mse": 1.0, "geodesic": 0.01},
}
#: Where LPIPS compares: super-resolution at the observation's resolution, as the paper.
CONFIG_LPIPS_SPACE = {"ffhq1024_inpainting_box": "image", "ffhq1024_superres": "observation", "ffhq1024_denoising": "image"}
# Image-space LPIPS at 256 as the paper; super-resolution at the 64x64 observation as it is.
CONFIG_LPIPS_RESIZE = {"ffhq1024_inpainting_box": 256, "ffhq1024_superres": None, "ffhq1024_denoising": 256}


def _config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_ffhq1024_configs_follow_the_paper(path: Path) -> None:
    cfg = _config(path)
    model = cfg["model"]
    gen = model["generator"]
    assert gen["class_path"] == "ilo_pl.modules.generators.stylegan2.StyleGAN2Generator"
    assert gen["init_args"]["latent_space"] == "gaussian_fit"
    assert model["loss_weights"] == CONFIG_LOSSES[path.stem]
    assert set(model["losses"]) == set(model["loss_weights"])
    assert model["sphere"] is True
    # The geodesic term with the authors' normalisation, for which 0.01 is their weight.
    assert (model["losses"]["geodesic"].get("init_args") or {}).get("reduction", "authors") == "authors"
    if "lpips" in model["losses"]:
        lp = model["losses"]["lpips"]["init_args"]
        assert lp["net"] == "vgg" and lp["resize"] == CONFIG_LPIPS_RESIZE[path.stem] and lp["space"] == CONFIG_LPIPS_SPACE[path.stem]
    op = cfg["data"]["operator"]
    if op["class_path"].endswith("RandomMask") and op["init_args"]["fraction"] < 0.2:
        assert "lpips" not in model["losses"]  # the paper's appendix: MSE only below 20% observed
    if op["class_path"].endswith("CompressedSensing"):
        assert "lpips" not in model["losses"]
    with torch.device("meta"):
        big = StyleGAN2Generator(size=1024, style_dim=512, n_mlp=8)
    want = [
        {"split": s.split, "steps": s.steps, "lr": s.lr, "free": s.free, "radius": s.radius}
        for s in paper_stages(big)
    ]
    assert model["stages"] == want


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_keep_the_rgb_skip_fixed(g: StyleGAN2Generator, path: Path) -> None:
    """Their stages free the feature map h but not the RGB skip, and G2(G1(v)) == G(v) at their splits."""
    from ilo_pl.stages import Stage

    stages = [Stage(**s) for s in _config(path)["model"]["stages"]]
    v = g.init_variables(2, torch.Generator().manual_seed(11))
    with torch.no_grad():
        full = g(v)
        for st in stages:
            groups = g.groups(st.split)
            free = {name for name, group in groups.items() if st.is_free(name, group)}
            if st.split > 0:
                assert "h" in free and "skip" not in free, (st.split, sorted(free))
                mid = g.advance(v, 0, st.split)
                torch.testing.assert_close(g.render(mid, st.split), full, atol=1e-5, rtol=0)


def test_ilo_never_optimises_the_rgb_skip_under_the_paper_schedule(g: StyleGAN2Generator) -> None:
    """The engine's variables, stage by stage, with paper_stages: h is one, skip never."""
    import pytorch_lightning as pl

    from ilo_pl.api import solve

    seen: Dict[int, set] = {}

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001, ANN201
            seen.setdefault(module.stage_index, set()).update(module.variables.keys())

    truth = g.init_variables(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = g(truth)
    stages = paper_stages(g, steps=(2, 2, 2, 2))
    # selection="last": the result is the last stage's state, at a split > 0, where the check below means something.
    result = solve(g, Identity(), x, stages, callbacks=[Record()], selection="last")
    assert sorted(seen) == [0, 1, 2, 3]
    for index in (1, 2, 3):
        assert "h" in seen[index] and "skip" not in seen[index], (index, sorted(seen[index]))
    sol = result.solutions[0]
    assert sol.split == stages[-1].split > 0, sol.split
    # the returned state still renders the returned image: G2(G1(v)) == G(v) kept, the fixed skip included
    with torch.no_grad():
        torch.testing.assert_close(g.render(sol.state, sol.split), result.images, atol=1e-5, rtol=0)
