"""Bad input that used to abort a run or mislead (issue 19, "the first hour"): NaN pixels in one
file, a single image file as ``data``, random bytes as a checkpoint, tiny images."""

from __future__ import annotations

import argparse
import ast
import csv
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from ilo_pl.checkpoints import CheckpointError, load_checkpoint
from ilo_pl.cli import main
from ilo_pl.data import ImageFolder, InverseProblemDataModule, ProblemSource
from ilo_pl.io import UPSCALE_WARN_FACTOR, load_image
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import BoxMask
from ilo_pl.solutions import load_solution, regenerate_file

# In-process `ilo-pl` runs pass their arguments explicitly; pytest's own argv is not theirs.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
model:
  generator: {{class_path: ilo_pl.modules.generators.DCGANGenerator}}
  stages:
    - {{split: 0, steps: 2, lr: 0.1, free: [latent]}}
    - {{split: 1, steps: 2, lr: 0.1, free: [state], radius: {{state: 500.0}}}}
  log_every: 2
data:
  data: {data}
  operator: {{class_path: ilo_pl.operators.BoxMask, init_args: {{box: [38, 55, 14, 49]}}}}
  batch_size: 1
trainer:
  enable_progress_bar: false
"""


def _face(path: Path, i: int = 0, size: int = 64) -> Path:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([(xx + 0.2 * i) % 1, yy, 0.5 + 0.5 * np.sin(6 * xx * yy + i)], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def _nan_tiff(path: Path) -> Path:
    """A 32-bit float (PIL mode ``F``) TIFF with one NaN pixel: the one kind of image file that holds NaN."""
    a = np.full((64, 64), 0.5, np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "F"
    return path


def _fit(tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(data=data))
    run = tmp_path / "run"
    main(["fit", "--config", str(cfg), "--output.run_dir", str(run)])
    return run


def _rows(run: Path) -> List[Dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- NaN pixels in one input file ---------------------------------------------------------------
def test_nan_pixels_in_one_file_skip_it_by_name_and_the_others_are_solved(tmp_path, capsys):
    faces = tmp_path / "faces"
    faces.mkdir()
    _nan_tiff(faces / "a_bad.tif")  # sorts first: it used to abort the run before any problem
    _face(faces / "b.png", 0)
    _face(faces / "c.png", 1)
    with pytest.warns(UserWarning, match=r"skipping .*a_bad\.tif: 1 of its 4096 pixels are NaN or infinite; it is not solved"):
        run = _fit(tmp_path, faces)
    assert [r["id"] for r in _rows(run)] == ["b", "c"]
    assert all(r["failed"] == "" for r in _rows(run))
    with open(run / "skipped_inputs.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert len(skipped) == 1 and skipped[0]["file"].endswith("a_bad.tif") and "NaN" in skipped[0]["reason"]
    err = capsys.readouterr().err
    assert re.search(r"1 input file\(s\) were skipped and not solved .*skipped_inputs\.csv.*a_bad\.tif: 1 of its", err)


def test_non_finite_image_from_any_source_names_the_problem():
    class _NaNSource(ProblemSource):
        def __len__(self) -> int:
            return 1

        def name(self, index: int) -> str:
            return "broken_face"

        def load(self, index, image_shape, seed):  # noqa: ANN001, ANN201
            x = torch.zeros(image_shape)
            x[0, 0, 0] = float("nan")
            return x

    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data=_NaNSource())
    dm.bind(DCGANGenerator(weights="random"))
    with pytest.raises(ValueError, match=r"problem 'broken_face' of _NaNSource: 1 of its 12288 pixel values are NaN"):
        dm.make_batch([0])


def test_image_folder_of_only_bad_files_says_why(tmp_path):
    _nan_tiff(tmp_path / "bad.tif")
    with pytest.warns(UserWarning, match="bad.tif"), pytest.raises(ValueError, match=r"no usable image in .*bad\.tif: 1 of its"):
        ImageFolder(tmp_path)


# -- a single image file as data ----------------------------------------------------------------
def test_single_image_file_is_accepted_as_data(tmp_path):
    face = _face(tmp_path / "face.png")
    src = ImageFolder(face)
    assert len(src) == 1 and src.name(0) == "face" and src.files == [face]
    run = _fit(tmp_path, face)
    assert [r["id"] for r in _rows(run)] == ["face"]
    assert (run / "face_reconstruction.png").is_file()


def test_missing_data_or_unusable_single_file_get_a_correct_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.png does not exist: give `data` a folder of images, an image file"):
        ImageFolder(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt cannot be solved: not a readable image"):
        ImageFolder(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"bad\.tif cannot be solved: 1 of its 4096 pixels are NaN"):
        ImageFolder(_nan_tiff(tmp_path / "bad.tif"))


# -- random bytes as a checkpoint -----------------------------------------------------------------
def _garbage(tmp_path: Path) -> Dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {"random": tmp_path / "random.pt", "empty": tmp_path / "empty.pt", "zip": tmp_path / "zip.pt"}
    files["random"].write_bytes(rng.bytes(4096))
    files["empty"].write_bytes(b"")
    files["zip"].write_bytes(b"PK\x03\x04" + rng.bytes(600))  # starts like a zip archive, is none
    return files


def _check_clean(err: BaseException, path: Path, what: str) -> None:
    message = str(err)
    assert isinstance(err, ValueError), type(err)
    assert message.startswith(f"{path} is not a valid {what}"), message
    assert "weights_only" not in message and "UnpicklingError" not in type(err).__name__
    assert err.__cause__ is None and err.__suppress_context__  # torch's advice is not chained in either


LOADERS: Dict[str, tuple] = {
    "DCGAN": (lambda p: DCGANGenerator(weights=p), "DCGAN checkpoint"),
    "solution": (load_solution, "ilo-pl solution file"),
}


@pytest.mark.parametrize("kind", ["random", "empty", "zip"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_random_bytes_as_checkpoint_name_the_file_and_never_advise_unpickling(tmp_path, loader, kind):
    path = _garbage(tmp_path)[kind]
    fn, what = LOADERS[loader]
    with pytest.raises(ValueError) as info:
        fn(path)
    _check_clean(info.value, path, what)


def test_regenerate_command_refuses_random_bytes_as_solution(tmp_path):
    path = _garbage(tmp_path)["random"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(data=tmp_path))
    with pytest.raises(CheckpointError) as info:
        regenerate_file(path, cfg, tmp_path / "out.png")
    _check_clean(info.value, path, "ilo-pl solution file")
    assert not (tmp_path / "out.png").exists()


def test_classifier_weight_files_of_random_bytes_are_refused_cleanly(tmp_path):
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    path = _garbage(tmp_path)["random"]
    with pytest.raises(ValueError) as info:
        load_robust_classifier(path, arch="resnet18", num_classes=10)
    _check_clean(info.value, path, "MadryLab robustness checkpoint")
    # allow_pickle (the documented opt-in for trusted pickles) never unpickles a file that is no pickle
    with pytest.raises(ValueError) as info:
        load_robust_classifier(path, arch="resnet18", num_classes=10, allow_pickle=True)
    _check_clean(info.value, path, "MadryLab robustness checkpoint")
    pytest.importorskip("efficientnet_lite_pytorch")
    from ilo_pl.classifiers.efficientnet import efficientnet_lite0

    with pytest.raises(ValueError) as info:
        efficientnet_lite0(weights=path)
    _check_clean(info.value, path, "EfficientNet-Lite0 weights file")


def test_random_bytes_as_stylegan2_checkpoint_are_refused_cleanly(tmp_path):
    from ilo_pl.modules.generators.stylegan2.checkpoint import read_checkpoint

    path = _garbage(tmp_path)["random"]
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    _check_clean(info.value, path, "StyleGAN-2 checkpoint")


def test_load_checkpoint_reads_weights_and_names_refused_objects(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_checkpoint(good, "test checkpoint")["w"], torch.ones(2))
    pickled = tmp_path / "pickled.pt"
    torch.save({"args": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(CheckpointError, match=r"holds Python objects that ilo-pl does not load .*argparse\.Namespace") as info:
        load_checkpoint(pickled, "test checkpoint")
    assert "weights_only=False" not in str(info.value) and info.value.refused
    ns = load_checkpoint(pickled, "test checkpoint", safe_globals=[argparse.Namespace])["args"]
    assert ns.a == 1
    with pytest.raises(FileNotFoundError, match="test checkpoint .*missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "test checkpoint")


def test_every_torch_load_in_the_package_goes_through_load_checkpoint():
    allowed = {
        "ilo_pl/checkpoints.py",  # the safe loader itself
    }
    offenders = []
    for path in sorted((ROOT / "ilo_pl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load") or rel in allowed:
                continue
            unsafe = any(k.arg == "weights_only" and ast.unparse(k.value) == "False" for k in node.keywords)
            weights_only = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
            # robustness_compat's full unpickling is the caller's explicit allow_pickle opt-in (trusted files);
            # the NVIDIA pickle reader loads each storage payload (bytes inside the pickle, not a file)
            # weights-only and wraps its errors in NetworkPickleError naming the file.
            payload = rel.endswith("nvlabs/pickle_reader.py") and weights_only
            if not (rel.endswith("robustness_compat.py") and unsafe) and not payload:
                offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


# -- tiny images -------------------------------------------------------------------------------
def test_tiny_image_upscaled_by_a_large_factor_warns_naming_file_size_and_frame(tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    for policy in ("center_crop", "resize"):
        with pytest.warns(UserWarning, match=r"dot\.png is only 1x1 pixels: it is enlarged 64x to the generator's 64x64 frame \(more than 4x\)"):
            assert load_image(tmp_path / "dot.png", size=(64, 64), policy=policy).shape == (3, 64, 64)
    # a frame of another aspect ratio: the crop keeps at least one pixel (it used to be empty)
    with pytest.warns(UserWarning, match="enlarged 128x to the generator's 128x64 frame"):
        assert load_image(tmp_path / "dot.png", size=(128, 64)).shape == (3, 128, 64)


def test_upscaling_up_to_the_threshold_does_not_warn(tmp_path, recwarn):
    assert UPSCALE_WARN_FACTOR == 4.0
    _face(tmp_path / "small.png", size=16)  # exactly 4x
    _face(tmp_path / "wide.png", size=200)  # downscaled
    load_image(tmp_path / "small.png", size=(64, 64))
    load_image(tmp_path / "wide.png", size=(64, 64))
    assert not [w for w in recwarn if "enlarged" in str(w.message)]
