"""Test-wide settings, the ``device`` fixture, the ``gpu`` marker and the shared fixtures' paths.

* ``device``: every test that takes it runs on ``"cpu"``, and on ``"cuda"`` where
  PyTorch sees a GPU (the way kornia's test suite parametrises its ``device``).
* ``gpu``: the tests that exercise a GPU: those marked ``@pytest.mark.gpu`` (skipped
  where no GPU is visible) and every ``device="cuda"`` case, whether it comes from
  the fixture or from a ``parametrize("device", ...)``, and every ``impl="cuda"`` case. ``scripts/gpu_checks.sh``
  runs ``pytest -m gpu``; ``-m "not gpu"`` leaves them out.
* ``SHARED``, ``FIXTURES``, ``TINY``: ``../shared`` beside the clone (read-only).
* Helpers shared by test modules (imported with ``from conftest import ...``): ``synthetic_face``,
  and the restart tests' generator, problems and schedule (``random_dcgan``, ``masked_faces``,
  ``two_stages``).
"""

import re
from pathlib import Path
from typing import TYPE_CHECKING, List

import pytest
import torch

if TYPE_CHECKING:
    from ilo_pl.modules.generators import DCGANGenerator

#: ``../shared`` beside the clone: conformance vectors and benchmark faces (read-only).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"
#: The tiny StyleGAN-2 checkpoint of the rosinality port (see ``FIXTURES / "README.md"``).
TINY = FIXTURES / "stylegan2_rosinality_tiny.pt"

#: The devices the ``device`` fixture runs tests on.
DEVICES: List[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# One intra-op thread: results do not depend on the thread count, and on a
# shared 2-core machine OpenMP's spinning threads slow tests down many-fold.
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: exercises a CUDA GPU (skipped without one); scripts/gpu_checks.sh runs `pytest -m gpu`"
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marks added here must count
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Mark ``gpu`` every ``device="cuda"``/``impl="cuda"`` case and every test skipped as "needs a CUDA/GPU"; skip ``gpu`` tests where no GPU is visible."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is visible to PyTorch)")
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and (
            str(callspec.params.get("device", "")).startswith("cuda") or callspec.params.get("impl") == "cuda"
        ):
            item.add_marker(pytest.mark.gpu)
        # A CUDA test written with a plain skipif ("needs a CUDA GPU") still belongs to the GPU run.
        if any(re.search(r"\bneeds? an? (cuda|gpu)\b", str(m.kwargs.get("reason", "")), re.I)
               for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """The device a test runs on: ``"cpu"``, and ``"cuda"`` where a GPU is visible (marked ``gpu``)."""
    return request.param


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """Keep one thread in every test, even after a test (or a library) changed it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_face(folder: Path) -> Path:
    """``folder`` with one smooth synthetic 64x64 'face' PNG, ``synthetic.png`` (no data files needed)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    img = np.stack([0.3 + 0.5 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(6 * xx * yy)], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(folder / "synthetic.png")
    return folder


def random_dcgan() -> "DCGANGenerator":
    """The embedded DCGAN's architecture with seeded random weights (no weight file needed)."""
    from ilo_pl.modules.generators import DCGANGenerator

    torch.manual_seed(0)
    return DCGANGenerator()


def masked_faces(gen: "DCGANGenerator") -> tuple:
    """``(ops, op, y)``: two random-mask inpainting problems (30% observed, per-problem masks) of faces
    in ``gen``'s range: the masks alone, their stack and its observation."""
    from ilo_pl.data import draw_from_generator
    from ilo_pl.operators import Inpainting, RandomMask

    g = torch.Generator().manual_seed(3)
    x = torch.cat([draw_from_generator(gen, g, split=2) for _ in range(2)])
    ops = [RandomMask(0.3).build(gen.image_shape, s) for s in (11, 12)]
    op = Inpainting.stack(ops)
    return ops, op, op(x)


def two_stages(steps: tuple = (4, 3)) -> list:
    """A short CSGM stage then one ILO stage at split 1 (radius 200): the restart tests' schedule."""
    from ilo_pl.stages import Stage

    return [Stage(split=0, steps=steps[0], lr=0.1, free=["latent"]),
            Stage(split=1, steps=steps[1], lr=0.1, free=["state"], radius={"state": 200.0})]
