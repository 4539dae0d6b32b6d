"""``LPIPSLoss``: the learned perceptual distance (Zhang et al. 2018) as an ILO loss term.

Where the comparison happens is the ``space`` argument, and both compared
images are resized to ``resize x resize`` (256 as in the ILO paper) before
the network: see :mod:`ilo_pl.losses.perceptual` (shared with
:class:`~ilo_pl.losses.STLPIPSLoss`).

Weights, all read with ``torch.load(weights_only=True)``:

* the linear heads (``pretrained=True``) ship inside the ``lpips`` package;
* the backbone (``pnet_rand=False``) is torchvision's ImageNet VGG16 (or
  AlexNet/SqueezeNet1.1), taken from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/``, e.g. ``vgg16-397923af.pth``) or
  downloaded there once. Offline, place the file there yourself, or use
  ``pnet_rand=True`` (a random backbone: for tests only).

The network is frozen and stays in eval mode: it is never among the optimised
parameters.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from ilo_pl.checkpoints import load_checkpoint
from ilo_pl.losses.perceptual import SPACES, PerceptualLoss

# torchvision ImageNet weights of each LPIPS backbone (file names in the hub cache).
_BACKBONE_URLS = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}

__all__ = ["LPIPSLoss", "SPACES", "backbone_weights_path"]


def backbone_weights_path(net: str) -> Path:
    """Where the ImageNet backbone of LPIPS ``net`` is expected in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_BACKBONE_URLS[net])


def _fetch_backbone(net: str) -> dict:
    path = backbone_weights_path(net)
    if not path.is_file():
        url = _BACKBONE_URLS[net]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:  # URLError, timeouts, read-only cache: all mean "no weights"
            if path.exists() and path.stat().st_size == 0:
                path.unlink()
            raise RuntimeError(
                f"LPIPS needs the ImageNet weights of its '{net}' backbone and could not download "
                f"them ({type(err).__name__}: {err}). Download {url} on a machine with internet and "
                f"place it at {path} (the torch hub cache; set TORCH_HOME to move it), or, for "
                "tests only, use LPIPSLoss(pnet_rand=True) (random backbone)"
            ) from err
    return load_checkpoint(path, f"torchvision '{net}' backbone weights file (LPIPS)")


class LPIPSLoss(PerceptualLoss):
    """Per-sample LPIPS between the generated image and the observation, in image or observation space.

    Args:
        net: backbone, ``"vgg"`` (default, as the ILO paper), ``"alex"`` or ``"squeeze"``.
        pretrained: load the linear heads calibrated on human judgements
            (shipped with the ``lpips`` package); ``False`` leaves them random.
        pnet_rand: random backbone instead of the ImageNet one (offline tests).
        resize: side both images are resized to (bilinear, antialiased);
            ``None`` keeps the generator's size.
        version: LPIPS version of the heads (``"0.1"``).
        detach_reference: treat the superimposed observation as a constant
            target (its generated-pixel fill gets no gradient through it).
        space: ``"auto"``, ``"image"`` or ``"observation"``: where the two
            images are compared (see the module docstring).

    Raises:
        ValueError: unknown ``net`` or ``space``, or bad ``resize``; at call
            time, measurements the chosen space cannot compare.
        RuntimeError: if the backbone weights are neither cached nor downloadable.
    """

    metric = "LPIPS"
    loss_key = "lpips"
    min_size = 16

    def __init__(
        self,
        net: str = "vgg",
        pretrained: bool = True,
        pnet_rand: bool = False,
        resize: Optional[int] = 256,
        version: str = "0.1",
        detach_reference: bool = True,
        space: str = "auto",
    ) -> None:
        super().__init__()
        if net not in _BACKBONE_URLS:
            raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {sorted(_BACKBONE_URLS)}")
        self._init_pairing(resize, detach_reference, space)
        import lpips

        # Fetch the backbone first: fail fast, before building the network.
        tv = None if pnet_rand else _fetch_backbone(net)
        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated `pretrained=` argument.
            warnings.simplefilter("ignore", UserWarning)
            # Built with random backbone and heads: no download and no unsafe
            # torch.load inside lpips; the weights are loaded below.
            self.lpips = lpips.LPIPS(
                pretrained=False, net=net, version=version, pnet_rand=True, verbose=False
            )
        if pretrained:
            heads = Path(lpips.__file__).parent / "weights" / f"v{version}" / f"{net}.pth"
            if not heads.is_file():
                raise FileNotFoundError(f"the lpips package has no heads for version {version}: {heads}")
            sd = load_checkpoint(heads, f"LPIPS v{version} '{net}' heads file")
            self._load(sd, prefix_ok=("lin",), what=str(heads))
        if not pnet_rand:
            sd = {}
            for key in self.lpips.net.state_dict():
                # lpips keeps torchvision's layer index: net.sliceS.<i>.weight <- features.<i>.weight
                _, idx, leaf = key.split(".", 2)
                sd[f"net.{key}"] = tv[f"features.{idx}.{leaf}"]  # type: ignore[index]
            self._load(sd, prefix_ok=("net.",), what=str(backbone_weights_path(net)))
        self.net_name = net
        for p in self.lpips.parameters():
            p.requires_grad_(False)
        super().train(False)

    def _load(self, sd: dict, prefix_ok: Tuple[str, ...], what: str) -> None:
        own = self.lpips.state_dict()
        # ``lins.<i>`` are aliases of ``lin<i>`` (a ModuleList of the same layers).
        expected = {k for k in own if k.startswith(prefix_ok) and not k.startswith("lins.")}
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(f"{what} does not fit LPIPS: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.lpips.load_state_dict(sd, strict=False)

    def network_distance(self, image: Tensor, reference: Tensor) -> Tensor:
        """LPIPS ``[B, 1, 1, 1]`` of two prepared batches (the ``lpips`` package's network)."""
        return self.lpips(image, reference)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, resize={self.resize}, space={self.space!r}"
