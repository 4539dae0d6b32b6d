"""Test-wide settings, the ``device`` fixture, the ``gpu`` marker and the shared fixtures' paths.

* ``device``: every test that takes it runs on ``"cpu"``, and on ``"cuda"`` where
  PyTorch sees a GPU (the way kornia's test suite parametrises its ``device``).
* ``gpu``: the tests that exercise a GPU: those marked ``@pytest.mark.gpu`` (skipped
  where no GPU is visible) and every ``device="cuda"`` case, whether it comes from
  the fixture or from a ``parametrize("device", ...)``, and every ``impl="cuda"`` case. ``scripts/gpu_checks.sh``
  runs ``pytest -m gpu``; ``-m "not gpu"`` leaves them out.
* ``SHARED``, ``FIXTURES``, ``TINY``: ``../shared`` beside the clone (read-only).
"""

import re
from pathlib import Path
from typing import List

import pytest
import torch

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
