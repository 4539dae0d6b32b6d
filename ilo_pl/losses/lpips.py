"""``LPIPSLoss``: the learned perceptual distance (Zhang et al. 2018) as an ILO loss term.

Where the comparison happens is the ``space`` argument:

* ``"image"``: the generated image ``G(v)`` against
  ``operator.superimpose(image, observation)``: the observation itself for
  image-space operators (denoising), and for inpainting the observation with
  its unobserved pixels filled with the generated ones (so missing pixels add
  no mismatch).
* ``"observation"``: the measurement of the generated image ``A(G(v))`` (the
  engine's ``ctx.measured``, with SNA noise when SNA is on) against the
  observation ``y``, for measurements that are themselves images of another
  size, such as super-resolution's low-resolution image: LPIPS at the
  observation's resolution, as the ILO paper computes it there.
* ``"auto"`` (default): image space when ``superimpose`` gives an image,
  else observation space when the measurement is an image ``[B, 3, h, w]``
  of the observation's shape, else a ``ValueError`` (compressed-sensing
  measurements and class labels are not images: drop the LPIPS weight there).

Both compared images are then resized to ``resize x resize`` (256 as in the
ILO paper) before the network.

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
import torch.nn.functional as F
from torch import Tensor

from ilo_pl.losses.base import LossContext, LossTerm

# torchvision ImageNet weights of each LPIPS backbone (file names in the hub cache).
_BACKBONE_URLS = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


#: Where :class:`LPIPSLoss` compares (see the module docstring).
SPACES = ("auto", "image", "observation")


def _is_image(t: Tensor) -> bool:
    """Whether ``t`` is a float RGB image batch ``[B, 3, h, w]``."""
    return t.dim() == 4 and t.shape[1] == 3 and t.is_floating_point()


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
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPSLoss(LossTerm):
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
        if space not in SPACES:
            raise ValueError(
                f"unknown LPIPS space {space!r}; choose 'auto', 'image' (G(v) against the "
                "superimposed observation) or 'observation' (A(G(v)) against y)"
            )
        if resize is not None and (not isinstance(resize, int) or resize < 16):
            raise ValueError(f"resize must be None or an int >= 16 (the networks downsample); got {resize!r}")
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
            sd = torch.load(heads, map_location="cpu", weights_only=True)
            self._load(sd, prefix_ok=("lin",), what=str(heads))
        if not pnet_rand:
            sd = {}
            for key in self.lpips.net.state_dict():
                # lpips keeps torchvision's layer index: net.sliceS.<i>.weight <- features.<i>.weight
                _, idx, leaf = key.split(".", 2)
                sd[f"net.{key}"] = tv[f"features.{idx}.{leaf}"]  # type: ignore[index]
            self._load(sd, prefix_ok=("net.",), what=str(backbone_weights_path(net)))
        self.net_name, self.resize, self.detach_reference = net, resize, detach_reference
        self.space = space
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

    def train(self, mode: bool = True) -> "LPIPSLoss":
        # Frozen metric: Lightning's model.train() must not switch dropout on.
        return super().train(False)

    def prepare(self, image: Tensor, reference: Tensor) -> Tuple[Tensor, Tensor]:
        """The pair the network sees: both resized to ``resize`` (and the reference detached)."""
        if reference.shape != image.shape:
            raise ValueError(
                f"LPIPS compares images of the same shape; the superimposed observation is "
                f"{tuple(reference.shape)} but the generated image is {tuple(image.shape)}"
            )
        if image.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images [B, 3, H, W]; got {image.shape[1]} channels")
        if self.resize is None and min(image.shape[-2:]) < 16:
            raise ValueError(
                f"LPIPS needs images of at least 16x16 (its networks downsample); got "
                f"{tuple(image.shape[-2:])}: give LPIPSLoss a resize (e.g. 256)"
            )
        if self.detach_reference:
            reference = reference.detach()
        if self.resize is not None and tuple(image.shape[-2:]) != (self.resize, self.resize):
            size = (self.resize, self.resize)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
            reference = F.interpolate(reference, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image, reference

    def distance(self, image: Tensor, reference: Tensor) -> Tensor:
        """LPIPS ``[B]`` between two batches of images in ``[-1, 1]``."""
        x, r = self.prepare(image, reference)
        return self.lpips(x, r.to(x.dtype)).reshape(x.shape[0])

    def pair(self, ctx: LossContext) -> Tuple[Tensor, Tensor]:
        """The two images compared in this loss's ``space``: ``(generated, reference)``.

        Raises:
            ValueError: naming the operator and the shapes, when the space
                cannot compare its measurements.
        """
        op = type(ctx.operator).__name__
        if self.space != "observation":
            reference = ctx.operator.superimpose(ctx.image, ctx.observation)
            if reference is not None:
                return ctx.image, reference
            if self.space == "image":
                raise ValueError(
                    f"LPIPS space='image' compares G(v) with an image-sized observation, but "
                    f"{op} observations are {tuple(ctx.observation.shape)} for images of "
                    f"{tuple(ctx.image.shape)} (superimpose returned None); use space='observation' "
                    "for measurements that are images of another size (super-resolution), or drop "
                    "the 'lpips' loss weight for this operator"
                )
        measured, y = ctx.measured, ctx.observation
        if not (_is_image(measured) and measured.shape == y.shape):
            raise ValueError(
                f"LPIPS needs image-space observations, but {op} measurements are "
                f"{tuple(measured.shape)} (observation {tuple(y.shape)}), not images [B, 3, h, w], "
                "and superimpose gives no image to compare G(v) with; drop the 'lpips' loss weight "
                "for this operator (compressed sensing: MSE only, as the ILO authors' code)"
            )
        return measured, y

    def forward(self, ctx: LossContext) -> Tensor:
        return self.distance(*self.pair(ctx))

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, resize={self.resize}, space={self.space!r}"
