"""Test-wide settings."""

import torch

# One intra-op thread: results do not depend on the thread count, and on a
# shared 2-core machine OpenMP's spinning threads slow tests down many-fold.
torch.set_num_threads(1)
