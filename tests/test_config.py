"""``ilo_pl.config.build_from_config``: configs built as ``ilo-pl fit`` builds them, with no option dropped."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

from ilo_pl.config import build_from_config
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.modules.ilo import ILOModule
from ilo_pl.stages import Stage

ROOT = Path(__file__).resolve().parents[1]
DCGAN_CONFIGS = ["inpainting_box", "inpainting_random", "denoising", "superres", "compressed_sensing"]


@pytest.mark.parametrize("task", DCGAN_CONFIGS)
def test_every_module_option_of_a_shipped_config_reaches_the_module(task, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())
    cfg["model"].update(selection="last", log_every=7)
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    module, datamodule, trainer_kwargs = build_from_config(path)
    assert isinstance(module, ILOModule) and isinstance(datamodule, InverseProblemDataModule)
    assert module.selection == "last" and module.log_every == 7
    built = build_from_config(path)
    for key, value in cfg["model"].items():
        if key == "generator":
            assert type(built.module_kwargs[key]).__name__ == value["class_path"].rsplit(".", 1)[-1]
        elif key == "stages":
            assert module.stages == [Stage(**s) for s in value]
        else:
            assert built.module_kwargs[key] == value, key
    assert module.sphere == cfg["model"].get("sphere", False) and module.sna == cfg["model"].get("sna", False)
    assert trainer_kwargs == {}
    assert built.config["model"]["selection"] == "last"


def test_overrides_layers_and_trainer_entries(tmp_path):
    cfg = ROOT / "configs" / "compressed_sensing.yaml"
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"model": {"sna_samples": 4}, "data": {"seed": 9}}))
    built = build_from_config([cfg, extra], {"data": {"limit": 1, "operator": {"init_args": {"ratio": 0.05}}},
                                             "trainer": {"precision": "bf16-mixed"}})
    assert built.module.sna_samples == 4
    dm = built.datamodule
    assert dm.seed == 9 and dm.limit == 1
    assert built.datamodule_kwargs["operator"].ratio == 0.05
    assert built.datamodule_kwargs["operator"].kind == "circulant"  # the config's other arguments stay
    assert built.trainer_kwargs == {"precision": "bf16-mixed"}
    args = build_from_config(cfg, ["--model.selection", "last", "--data.limit", "2"])
    assert args.module.selection == "last" and args.datamodule.limit == 2


def test_bad_configs_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_from_config(tmp_path / "missing.yaml")
    bad = yaml.safe_load((ROOT / "configs" / "denoising.yaml").read_text())
    bad["model"]["no_such_option"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="not valid.*no_such_option"):
        build_from_config(path)
    with pytest.raises(TypeError):
        build_from_config(ROOT / "configs" / "denoising.yaml", "--model.sna false")


def test_global_rngs_are_left_alone():
    random.seed(123)
    torch.manual_seed(123)
    want = (random.random(), torch.rand(1))
    random.seed(123)
    torch.manual_seed(123)
    build_from_config(ROOT / "configs" / "inpainting_box.yaml")
    assert (random.random(), torch.rand(1)) == want


def test_fingerprint_follows_what_changes_results(tmp_path):
    base = ROOT / "configs" / "denoising.yaml"
    a = build_from_config(base)
    assert a.fingerprint() == build_from_config(base).fingerprint()
    assert a.fingerprint() != build_from_config(base, {"model": {"sna_samples": 2}}).fingerprint()
    limited = build_from_config(base, {"data": {"limit": 1}})
    assert a.fingerprint() != limited.fingerprint()
    assert a.fingerprint(exclude=["data.limit"]) == limited.fingerprint(exclude=["data.limit"])
