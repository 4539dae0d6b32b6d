"""``configs/stylegan2ada/*.yaml`` through ``ilo-pl fit``, with the NVlabs fixture snapshot.

The tiny StyleGAN2-ADA network pickle of ``../shared/fixtures/nvlabs`` (32x32) stands in
for NVIDIA's FFHQ 1024 snapshot, loaded through ``pretrained_generator`` /
``load_generator`` from its path alone: every config runs end to end with the
paper's schedule (a few steps per stage), and an in-range target (``x = G(v*)``)
is recovered clearly better than the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from conftest import FIXTURES
from ilo_pl.modules.generators import StyleGAN2ADAGenerator, load_generator
from test_configs import (  # the shared helpers of the rosinality config tests
    GAUSSIAN_FIT_SAMPLES,
    IN_RANGE_STEPS,
    _check_outputs,
    _fit,
    _load_png,
    _merge,
    _observation_png,
    _shipped,
    _stages_with_steps,
    _start_true_mse,
    _tiny_stylegan2_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
ADA_CONFIGS = sorted((ROOT / "configs" / "stylegan2ada").glob("*.yaml"))
PKL = FIXTURES / "nvlabs" / "stylegan2ada_tiny_shared.pkl"


def _pkl() -> Path:
    if not PKL.is_file():
        pytest.fail(f"missing fixture {PKL}: the shared fixtures must be at ../shared/fixtures/nvlabs")
    return PKL


def _overrides(cfg: Dict[str, Any]) -> Dict[str, Any]:
    out = _tiny_stylegan2_overrides(cfg)  # LPIPS offline at 32x32, operators scaled to 32x32
    out["model"]["generator"] = {
        "class_path": cfg["model"]["generator"]["class_path"],
        "init_args": {"checkpoint": str(_pkl()), "gaussian_fit_samples": GAUSSIAN_FIT_SAMPLES},
    }
    return out


def test_every_config_names_the_pretrained_loader() -> None:
    assert len(ADA_CONFIGS) == 5
    for config in ADA_CONFIGS:
        gen = _shipped(config)["model"]["generator"]
        assert gen["class_path"] == "ilo_pl.modules.generators.pretrained_generator"
        assert gen["init_args"]["checkpoint"].endswith(".pkl")


def test_load_generator_tells_the_format_from_the_file(tmp_path: Path) -> None:
    from conftest import TINY

    assert type(load_generator(TINY)).__name__ == "StyleGAN2Generator"
    # The name does not matter: a .pkl renamed .pt is still read as a network pickle.
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(_pkl().read_bytes())
    g = load_generator(renamed, latent_space="gaussian_fit", gaussian_fit_samples=500)
    assert isinstance(g, StyleGAN2ADAGenerator) and g.latent_space == "gaussian_fit"
    assert type(load_generator(FIXTURES / "nvlabs" / "stylegan3t_tiny.pkl")).__name__ == "StyleGAN3Generator"
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"hello")
    with pytest.raises(ValueError, match="neither"):
        load_generator(junk)
    assert not (tmp_path / "EMBEDDED_PICKLE_CODE_RAN").exists()


@pytest.mark.parametrize("config", ADA_CONFIGS, ids=lambda p: p.stem)
def test_stylegan2ada_config_runs_end_to_end(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _shipped(config)
    override = _merge(_overrides(cfg), {"model": {"stages": _stages_with_steps(cfg, 2)}, "data": {"limit": 1, "batch_size": 1}})
    run = _fit(tmp_path, config, override, "smoke")
    _check_outputs(run, _observation_png(cfg))
    assert not (tmp_path / "EMBEDDED_PICKLE_CODE_RAN").exists()


@pytest.mark.parametrize("name", ["ffhq1024_denoising", "ffhq1024_inpainting_box"])
def test_stylegan2ada_config_recovers_an_in_range_target(name: str, tmp_path: Path) -> None:
    config = ROOT / "configs" / "stylegan2ada" / f"{name}.yaml"
    cfg = _shipped(config)
    override = _merge(
        _overrides(cfg),
        {
            "model": {"stages": _stages_with_steps(cfg, IN_RANGE_STEPS)},
            "data": {
                "data": {"class_path": "ilo_pl.data.GeneratorSamples", "init_args": {"num": 1, "split": 0}},
                "limit": 1,
                "batch_size": 1,
            },
        },
    )
    run = _fit(tmp_path, config, override, "inrange")
    row = _check_outputs(run, _observation_png(cfg))
    latent_space = cfg["model"]["generator"]["init_args"].get("latent_space", "w+")
    gen = load_generator(_pkl(), latent_space=latent_space, gaussian_fit_samples=GAUSSIAN_FIT_SAMPLES)
    target = _load_png(run / f"{row['id']}_target.png")
    start = _start_true_mse(cfg, target, gen)
    result = float(row["true_mse"])
    print(f"{name}: start true MSE {start:.4f}, after ILO {result:.4f}")
    assert result < 0.2 * start, (result, start)
    assert torch.isfinite(torch.tensor(result))
