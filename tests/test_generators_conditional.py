"""Class labels per problem for class-conditional generators (NVIDIA's conditional StyleGAN2-ADA snapshots).

The NVlabs fixtures are unconditional, so a small random-weight conditional
:class:`~ilo_pl.modules.generators.nvlabs.StyleGAN2ADAGenerator` stands in:

* the split contract with a different class in every row of a batch (W+ and Gaussian fit);
* each problem's class is in its state (``class_label``, group ``condition``),
  carried to every split; with ``gaussian_fit`` it picks the problem's own fit;
* two problems with different classes solved together through ``InverseProblemDataModule``
  (``labels.csv`` beside the images) give what each gives solved alone, and their
  saved solutions regenerate their images with a freshly built generator;
* refusals: a class out of range, an image the labels file does not list, labels
  for an unconditional generator, a conditional generator without labels or default,
  malformed labels files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pytest
import pytorch_lightning as pl
import torch

from ilo_pl.callbacks import ResultWriter
from ilo_pl.data import GeneratorSamples, InverseProblemDataModule, read_class_labels
from ilo_pl.io import save_image
from ilo_pl.modules import ILOModule
from ilo_pl.modules.generators import DCGANGenerator, LatentSphere, StyleGAN2ADAGenerator
from ilo_pl.modules.generators.range import computed_entries
from ilo_pl.modules.variables import initial_state
from ilo_pl.operators import BoxMask
from ilo_pl.problem import ProblemBatch
from ilo_pl.solutions import load_solution, regenerate
from ilo_pl.stages import Stage
from ilo_pl.testing.generators import SplitGeneratorContract
from ilo_pl.trainer import default_trainer_kwargs, quiet_lightning
from nvlabs_common import ADA_PKL, max_err, nv_fixture, random_ada

C_DIM = 4


def _conditional(**kw: object) -> StyleGAN2ADAGenerator:
    """A 16x16 conditional StyleGAN2-ADA (4 classes) with seeded random weights: the same in every call."""
    return random_ada(c_dim=C_DIM, gaussian_fit_samples=500, **kw)


class MixedLabels(StyleGAN2ADAGenerator):
    """Without labels, row ``i`` of a batch gets class ``(3 i + 1) mod 4``: every batch mixes classes."""

    def init_variables(
        self, batch_size: int, generator: Optional[torch.Generator] = None, labels: Optional[Sequence[int]] = None
    ) -> Dict[str, torch.Tensor]:
        if labels is None:
            labels = [(3 * i + 1) % self.c_dim for i in range(batch_size)]
        return super().init_variables(batch_size, generator, labels)


def _mixed(**kw: object) -> MixedLabels:
    g = _conditional(**kw)
    mixed = MixedLabels(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16, c_dim=C_DIM,
                        mapping_kwargs={"num_layers": 2}, conv_clamp=256, mean_latent_samples=256,
                        gaussian_fit_samples=500, **kw)
    mixed.load_state_dict(g.state_dict())
    return mixed


class TestMixedLabelsContract(SplitGeneratorContract):
    """Every row its own class: each sample renders alone as in the batch, at every split."""

    batch = 3
    atol = 1e-5

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _mixed().to(device)


class TestMixedLabelsGaussianFitContract(TestMixedLabelsContract):
    """The same with a Gaussian fit per class (render reads each row's class)."""

    def make_generator(self, device: torch.device) -> StyleGAN2ADAGenerator:
        return _mixed(latent_space="gaussian_fit").to(device)


# ----------------------------------------------------------------------------- the state
def test_the_class_is_in_the_state_at_every_split() -> None:
    g = _conditional(latent_space="gaussian_fit")
    s = g.init_variables(3, torch.Generator().manual_seed(0), labels=[0, 2, 1])
    assert s["class_label"].tolist() == [0.0, 2.0, 1.0]
    for k in range(g.num_splits + 1):
        sk = g.advance(s, 0, k)
        assert list(sk)[-1] == "class_label" and torch.equal(sk["class_label"], s["class_label"]), k
        assert g.groups(k)["class_label"] == "condition" and "class_label" not in g.sphere_variables(k)
        assert "class_label" not in computed_entries(g, k)  # ILO's range projection carries it
    # Gaussian fit: the class picks the fit the rows go through, so it changes the image.
    with torch.no_grad():
        img = g.render(s, 0)
        other = g.render({**s, "class_label": torch.tensor([3.0, 2.0, 1.0])}, 0)
    assert max_err(img[0], other[0]) > 1e-3 and max_err(img[1:], other[1:]) == 0
    with torch.no_grad():
        s["class_label"][0] = 3.0  # changed in place: the fits follow
        assert max_err(g.render(s, 0), other) == 0
    s4 = g.init_variables(1, torch.Generator().manual_seed(0), labels=[0])
    with torch.no_grad():
        want = g.render(s4, 0)
    with torch.inference_mode():  # inference tensors have no version counter: still right
        s4 = g.init_variables(1, torch.Generator().manual_seed(0), labels=[0])
        assert max_err(g.render(s4, 0), want) == 0
    mu1, sigma1 = g.gaussian_fit(1)
    assert not torch.equal(mu1, g.gaussian_fit(2)[0]) and sigma1.shape == (16,)


def test_the_initial_rows_map_each_problem_with_its_own_class() -> None:
    g = _conditional()
    seeds, labels = [11, 12], [1, 3]
    together = initial_state(g, seeds, 0, False, torch.device("cpu"), labels)
    for i, (seed, label) in enumerate(zip(seeds, labels)):
        alone = initial_state(g, [seed], 0, False, torch.device("cpu"), [label])
        for name, value in together.items():
            assert torch.equal(value[i : i + 1], alone[name]), (i, name)
    swapped = initial_state(g, seeds, 0, False, torch.device("cpu"), labels[::-1])
    assert not torch.equal(swapped["latent"], together["latent"])  # the class moves the start


def test_latent_sphere_passes_labels_on() -> None:
    wrapped = LatentSphere(_conditional())
    assert wrapped.num_classes == C_DIM
    s = wrapped.init_variables(2, torch.Generator().manual_seed(0), labels=[2, 3])
    assert s["class_label"].tolist() == [2.0, 3.0]


# ----------------------------------------------------------------------------- solving through the data
def _faces(folder: Path, labels: Dict[str, int]) -> None:
    """16x16 images drawn from the conditional generator, each from its own class."""
    g = _conditional()
    folder.mkdir()
    for i, (name, label) in enumerate(labels.items()):
        with torch.no_grad():
            x = g.render(g.init_variables(1, torch.Generator().manual_seed(100 + i), labels=[label]), 0)
        save_image(x[0].clamp(-1, 1), folder / name)


def _solve(data: Path, class_labels: object, batch_size: int, out: Path) -> Path:
    """Box inpainting of every image of ``data`` (two stages) with ResultWriter; returns the run folder."""
    quiet_lightning()
    gen = _conditional(latent_space="gaussian_fit", modconv_impl="unfused")
    stages = [Stage(split=0, steps=4, lr=0.05, free=["latent", "noise"]),
              Stage(split=2, steps=4, lr=0.05, free=["latent", "state", "noise"], radius={"state": 50.0})]
    dm = InverseProblemDataModule(BoxMask([4, 9, 4, 9]), data=str(data), batch_size=batch_size, seed=3,
                                  class_labels=class_labels)
    writer = ResultWriter(output_dir=out)
    trainer = pl.Trainer(**{**default_trainer_kwargs(), "callbacks": [writer]})
    trainer.fit(ILOModule(gen, stages), datamodule=dm)
    return writer.run_dir


def test_problems_with_different_classes_solve_as_if_alone_and_regenerate(tmp_path: Path) -> None:
    labels = {"a.png": 1, "b.png": 3}
    data = tmp_path / "faces"
    _faces(data, labels)
    csv = data / "labels.csv"  # beside the images: not taken for one
    csv.write_text("file,label\n" + "".join(f"{n},{c}\n" for n, c in labels.items()))
    both = _solve(data, str(csv), 2, tmp_path / "both")
    alone = _solve(data, str(csv), 1, tmp_path / "alone")
    # The same weights and settings, no fit computed yet.
    fresh = _conditional(latent_space="gaussian_fit", modconv_impl="unfused")
    for pid, label in (("a", 1), ("b", 3)):
        sol_b, sol_a = load_solution(both / f"{pid}_solution.pt"), load_solution(alone / f"{pid}_solution.pt")
        assert sol_b["state"]["class_label"].tolist() == [float(label)]
        assert max_err(sol_b["image"], sol_a["image"]) < 1e-4, pid
        for name, value in sol_b["state"].items():
            assert max_err(value, sol_a["state"][name]) < 1e-4, (pid, name)
        # The class rides in the solution: a new generator regenerates the image with the class's fit.
        assert max_err(regenerate(both / f"{pid}_solution.pt", fresh), sol_b["image"]) < 1e-6, pid
        wrong = {**sol_b, "state": {**sol_b["state"], "class_label": torch.tensor([float((label + 1) % C_DIM)])}}
        assert max_err(regenerate(wrong, fresh), sol_b["image"]) > 1e-3
    assert sorted(p.name for p in both.glob("*_solution.pt")) == ["a_solution.pt", "b_solution.pt"]
    assert not (both / "skipped_inputs.csv").exists()  # the labels file was left out, not skipped
    manifest = json.loads((both / "run_manifest.json").read_text())
    assert manifest["data"]["class_labels"] == {"a": 1, "b": 3}  # a resume with other classes is refused


def test_one_class_for_every_problem_and_generator_draws(tmp_path: Path) -> None:
    g = _conditional()
    dm = InverseProblemDataModule(BoxMask([4, 9, 4, 9]), data=GeneratorSamples(num=3), class_labels=2)
    dm.bind(g)
    batch = dm.make_batch([0, 1, 2])
    assert batch.labels == [2, 2, 2] and dm.class_label_table == {f"g000{i}_inrange": 2 for i in range(3)}
    # Ground truth drawn from the generator comes from each problem's class too.
    by_csv = tmp_path / "labels.csv"
    by_csv.write_text("g0000_inrange,0\ng0001_inrange,3\n")
    dm = InverseProblemDataModule(BoxMask([4, 9, 4, 9]), data=GeneratorSamples(num=2), class_labels=str(by_csv))
    dm.bind(g)
    assert dm.source.labels == [0, 3] and dm.make_batch([1]).labels == [3]


# ----------------------------------------------------------------------------- refusals
def _bind(tmp_path: Path, csv_text: Optional[str], generator: object, class_labels: object = None) -> None:
    data = tmp_path / "faces"
    if not data.exists():
        _faces(data, {"a.png": 0, "b.png": 1})
    if csv_text is not None:
        (tmp_path / "labels.csv").write_text(csv_text)
        class_labels = str(tmp_path / "labels.csv")
    InverseProblemDataModule(BoxMask([4, 9, 4, 9]), data=str(data), class_labels=class_labels).bind(generator)


def test_bad_labels_are_refused_before_any_solve(tmp_path: Path) -> None:
    g = _conditional()
    with pytest.raises(ValueError, match=r"labels.csv: class 4 of 'b.png' is out of range.*4 classes \(0\.\.3\)"):
        _bind(tmp_path, "file,label\na.png,0\nb.png,4\n", g)
    with pytest.raises(ValueError, match=r"gives no class for 1 of the 2 problems: b.png; add a `file,label` row"):
        _bind(tmp_path, "a.png,0\nc.png,1\n", g)
    with pytest.raises(ValueError, match=r"class -1 of 'a.png' is out of range"):
        _bind(tmp_path, None, g, class_labels=-1)
    with pytest.raises(ValueError, match=r"given, but the generator \(DCGANGenerator\) is unconditional"):
        _bind(tmp_path, "a.png,0\nb.png,1\n", DCGANGenerator())
    with pytest.raises(ValueError, match=r"given, but the generator \(StyleGAN2ADAGenerator\) is unconditional"):
        _bind(tmp_path, None, StyleGAN2ADAGenerator(nv_fixture(ADA_PKL)), class_labels=0)
    # A conditional generator without labels or a default says how to give them.
    with pytest.raises(ValueError, match=r"class-conditional \(4 classes, 0\.\.3\): give each problem a class label"
                                         r".*--data.class_labels labels.csv.*class_label"):
        _bind(tmp_path, None, g)
    _bind(tmp_path, None, _conditional(class_label=1))  # a default serves every problem
    with pytest.raises(TypeError, match="class_labels must be an int"):
        InverseProblemDataModule(BoxMask([4, 9, 4, 9]), class_labels=[0, 1])


def test_the_generator_checks_labels_too(tmp_path: Path) -> None:
    """Labels reaching the generator another way (a ProblemBatch made by hand) are checked there."""
    g = _conditional()
    with pytest.raises(ValueError, match=r"class label 9 is out of range"):
        initial_state(g, [0, 1], 0, False, torch.device("cpu"), [0, 9])
    with pytest.raises(ValueError, match=r"1 class labels for 2 problems"):
        g.check_labels([0], 2)
    with pytest.raises(ValueError, match=r"must be a whole number"):
        g.init_variables(1, labels=[1.5])
    with pytest.raises(ValueError, match=r"DCGANGenerator is unconditional .* class labels \[0, 1\] were given"):
        initial_state(DCGANGenerator(), [0, 1], 0, False, torch.device("cpu"), [0, 1])
    with pytest.raises(ValueError, match=r"class-conditional"):
        g.init_variables(1)
    with pytest.raises(ValueError, match=r"needs 2 class labels"):
        ProblemBatch(ids=["a", "b"], observation=torch.zeros(2, 3), operator=None, seeds=[0, 1], labels=[0])
    b = ProblemBatch(ids=["a"], observation=torch.zeros(1, 3), operator=None, seeds=[0], labels=[2])
    assert b.key != ProblemBatch(ids=["a"], observation=torch.zeros(1, 3), operator=None, seeds=[0], labels=[1]).key


@pytest.mark.parametrize("text, message", [
    ("a.png,0\na.png,1\n", r"line 2: 'a.png' is listed twice \(also on line 1\)"),
    ("file,label\na.png,cat\n", r"line 2: the class of 'a.png' must be a whole number; got 'cat'"),
    ("a.png\n", r"line 1: expected `file,label`"),
    ("file,label\n", r"lists no image"),
])
def test_malformed_labels_files(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_class_labels(path)


def test_labels_file_conventions(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("\ufefffile_name,class\r\nimages/a.png, 3 ,extra\r\n\r\nb.png,0\r\n")
    assert read_class_labels(path) == {"a.png": 3, "b.png": 0}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_class_labels(tmp_path / "nope.csv")


def test_api_solve_takes_one_label_per_problem_and_refuses_them_for_unconditional_generators() -> None:
    from ilo_pl.api import solve
    from ilo_pl.modules.generators import DCGANGenerator
    from ilo_pl.operators.noise import Identity
    from ilo_pl.stages import Stage

    gen = DCGANGenerator()
    y = gen(gen.init_variables(1, torch.Generator().manual_seed(0))).detach()
    with pytest.raises(ValueError, match="unconditional"):
        solve(gen, Identity(), y, [Stage(split=0, steps=1)], labels=[1])
    cond = _conditional()
    state = cond.init_variables(2, torch.Generator().manual_seed(0), labels=[1, 3])
    y = cond.render(state, 0).detach()
    stages = [Stage(split=0, steps=2, lr=0.01, free=["latent"])]
    both = solve(cond, Identity(), y, stages, labels=[1, 3], trainer_kwargs={"accelerator": "cpu"})
    assert [s.state["class_label"].item() for s in both.solutions] == [1.0, 3.0]
    alone = solve(cond, Identity(), y[1:], stages, labels=[3], seeds=[1], trainer_kwargs={"accelerator": "cpu"})
    torch.testing.assert_close(alone.images[0], both.images[1], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="class"):
        solve(cond, Identity(), y, stages, labels=[1, 99])


def test_restarts_keep_each_problems_class() -> None:
    """Restart rows are expanded with their problem's class, and the winner renders with it."""
    from ilo_pl.api import solve
    from ilo_pl.operators.noise import Identity

    cond = _conditional()
    y = cond.render(cond.init_variables(2, torch.Generator().manual_seed(0), labels=[1, 3]), 0).detach()
    stages = [Stage(split=0, steps=2, lr=0.01, free=["latent"]), Stage(split=1, steps=1, lr=0.01, free=["state"])]
    res = solve(cond, Identity(), y, stages, labels=[1, 3], seeds=[4, 5], restarts=3, restart_keep=2,
                trainer_kwargs={"accelerator": "cpu"})
    assert [s.state["class_label"].item() for s in res.solutions] == [1.0, 3.0]
    alone = solve(cond, Identity(), y[1:], stages, labels=[3], seeds=[5], restarts=3, restart_keep=2,
                  trainer_kwargs={"accelerator": "cpu"})
    assert alone.solutions[0].restart == res.solutions[1].restart
    torch.testing.assert_close(alone.images[0], res.images[1], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- class labels stay fixed
@pytest.mark.parametrize("latent_space", ["w+", "gaussian_fit"])
def test_class_labels_are_never_optimised(latent_space: str) -> None:
    """``condition`` in ``free`` is refused, a pattern naming only the class too; ``*`` leaves the class fixed."""
    from ilo_pl.api import solve
    from ilo_pl.modules.variables import stage_variables
    from ilo_pl.operators.noise import Identity

    with pytest.raises(ValueError, match=r"cannot free 'condition'.*class label.*data.class_labels"):
        Stage(split=0, steps=2, free=["latent", "condition"])
    cond = _conditional(latent_space=latent_space)
    with pytest.raises(ValueError, match=r"`free` key 'class_\*' names only class labels \(class_label"):
        ILOModule(cond, [Stage(split=0, steps=2, free=["latent", "class_*"])])
    state = cond.init_variables(2, torch.Generator().manual_seed(0), labels=[1, 3])
    every = stage_variables(state, Stage(split=0, steps=2, free=["*"]), cond.groups(0), {}, torch.device("cpu"))
    assert "class_label" in every.fixed and "class_label" not in every.params and "latent" in every.params
    y = cond.render(state, 0).detach()
    stages = [Stage(split=0, steps=2, lr=0.01, free=["*"]), Stage(split=1, steps=2, lr=0.01, free=["*"])]
    res = solve(cond, Identity(), y, stages, labels=[1, 3], trainer_kwargs={"accelerator": "cpu"})
    assert [s.state["class_label"].item() for s in res.solutions] == [1.0, 3.0]


def _old_solution(tmp_path: Path, cond: StyleGAN2ADAGenerator, split: int) -> Tuple[Path, torch.Tensor]:
    """A solution file as ilo-pl wrote before per-problem labels: no ``class_label`` in its state."""
    from ilo_pl.problem import Solution
    from ilo_pl.solutions import save_solution

    state = cond.init_variables(1, torch.Generator().manual_seed(7), labels=[2])
    with torch.no_grad():
        state = cond.advance(state, 0, split)
        image = cond.render(state, split).float()
    old = {k: v for k, v in state.items() if k != "class_label"}
    path = tmp_path / f"old_{cond.latent_space}_{split}_solution.pt"
    save_solution(path, Solution(split=split, stage=0, state=old), cond, image)
    return path, image


@pytest.mark.parametrize("split", [0, 2])
def test_solutions_from_before_per_problem_labels(tmp_path: Path, split: int) -> None:
    """W+: the class only chose the start, the saved rows render without it; Gaussian fit: a clear refusal."""
    cond = _conditional()
    path, image = _old_solution(tmp_path, cond, split)
    assert "class_label" not in load_solution(path)["state"]
    assert max_err(regenerate(path, cond), image) == 0.0
    other = _conditional(class_label=3)  # a default class: the same rendering
    assert max_err(regenerate(path, other, check_identity=False), image) == 0.0
    fit = _conditional(latent_space="gaussian_fit")
    path, image = _old_solution(tmp_path, fit, split)
    with pytest.raises(ValueError, match=r"predates per-problem class labels.*lacks \['class_label'\].*"
                                         r"sol\['state'\]\['class_label'\] = torch.tensor"):
        regenerate(path, fit)
    sol = load_solution(path)  # the way out the message gives
    sol["state"]["class_label"] = torch.tensor([2.0])
    assert max_err(regenerate(sol, fit, check_identity=False), image) < 1e-6


def test_run_manifest_records_the_default_class_and_refuses_resuming_with_another() -> None:
    """A conditional network's default class decides where every solve starts: a run folder made with
    one is not resumed with another (or none); an unconditional generator records nothing new."""
    import types

    from ilo_pl.manifest import compare_manifests, make_manifest

    def manifest(gen: object) -> Dict[str, object]:
        trainer = types.SimpleNamespace(lightning_module=types.SimpleNamespace(generator=gen),
                                        accelerator=object(), precision="32-true", accumulate_grad_batches=1,
                                        gradient_clip_val=None)
        return make_manifest(trainer, types.SimpleNamespace(fingerprint=lambda: {"kind": "test"}))

    m1, m3, none = manifest(_conditional(class_label=1)), manifest(_conditional(class_label=3)), manifest(_conditional())
    assert m1["generator"]["start.class_label"] == "1" and "start.class_label" not in none["generator"]
    assert _conditional(class_label=1).identity() == _conditional(class_label=3).identity()  # renders alike
    for old, new in ((m1, m3), (m1, none), (none, m3)):
        refusals, _ = compare_manifests(old, new)
        assert any("generator start.class_label" in r for r in refusals), refusals
    assert compare_manifests(m1, manifest(_conditional(class_label=1))) == ([], [])
    assert LatentSphere(_conditional(class_label=2)).start_settings() == {"class_label": 2}
    assert not any(k.startswith("start.") for k in manifest(DCGANGenerator(weights="random"))["generator"])
