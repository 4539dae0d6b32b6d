"""Test-wide settings and the paths of the shared fixtures (``../shared`` beside the clone)."""

from pathlib import Path

import pytest
import torch

#: ``../shared`` beside the clone: conformance vectors and benchmark faces (read-only).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"
#: The tiny StyleGAN-2 checkpoint of the rosinality port (see ``FIXTURES / "README.md"``).
TINY = FIXTURES / "stylegan2_rosinality_tiny.pt"

# One intra-op thread: results do not depend on the thread count, and on a
# shared 2-core machine OpenMP's spinning threads slow tests down many-fold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """Keep one thread in every test, even after a test (or a library) changed it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
