"""ST-LPIPS, the shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022), as a network, a distance and a loss term.

**Not the ILO paper's LPIPS.** The paper's loss is MSE plus LPIPS (Zhang et
al. 2018, VGG): :class:`~ilo_pl.losses.LPIPSLoss`, which needs torchvision's
ImageNet backbone weights (not shipped with the ``lpips`` package, which has
only the linear heads). ST-LPIPS is a different, retrained metric: its
AlexNet and VGG16 trunks downsample with anti-aliasing (blur pooling) so that
a shift of a pixel or two changes the distance little, and its weight files
hold the whole network as its authors trained it (trunk included, not
torchvision's ImageNet weights). Its values are on a similar scale to
LPIPS's but are not LPIPS values: never compare them with LPIPS numbers.

**Weights.** The complete networks (scaling layer, trunk, blur filters and
heads) ship as state dicts in the PyPI package ``stlpips-pytorch``
(``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``), so
ST-LPIPS works offline. ilo-pl depends on that package for these files only:
:func:`weights_path` finds them with :mod:`importlib.resources` and never
imports the package's code (its ``stlpips.py`` imports IPython and
torchsummary at module level, which it does not declare). The networks are
built here (:class:`STLPIPS`) and loaded with a weights-only ``torch.load``
and strict key matching; they are frozen and always in eval mode.

**The network** (the package's ``variant="shift_tolerant"``, blur filter size
3), for images in ``[-1, 1]``:

* scaling layer ``(x - shift) / scale`` (LPIPS v0.1's constants, stored in
  the weights);
* trunk, where every stride-2 step is a *blur pool*: reflection padding of 2
  on each side, then a depthwise 3x3 binomial filter ``[1, 2, 1]^T [1, 2, 1] /
  16`` (the ``filt`` buffers of the weights) with stride 2;

  * AlexNet: conv 11x11 (stride 1, zero padding 2), blur pool, ReLU -> *f1*;
    max-pool 3 (stride 1), blur pool, conv 5x5 (padding 2), ReLU -> *f2*;
    max-pool 3 (stride 1), blur pool, conv 3x3, ReLU -> *f3*; conv 3x3, ReLU
    -> *f4*; conv 3x3, ReLU -> *f5*;
  * VGG16: the five VGG16 blocks (3x3 convs, zero padding 1, each followed by
    a ReLU), each block after the first starting with a max-pool 2 (stride 1)
    and a blur pool; the features are the last ReLU of each block;

* per feature map: unit-normalise over the channels (``f / (||f|| + 1e-10)``),
  square the difference of the two images' maps, apply the layer's linear
  head (a 1x1 convolution without bias, non-negative weights), average over
  the spatial positions;
* sum over the five layers.

The heads were trained behind a dropout layer; at evaluation dropout is the
identity, so it is left out. One deliberate difference to the reference code:
the channel norm is ``sqrt(sum f^2 + 1e-20)``, so its gradient is finite where
a feature vector is exactly zero (the reference's ``sqrt(sum f^2)`` gives NaN
gradients there); the value changes by at most ``1e-10`` absolute in the norm.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.checkpoints import load_checkpoint, load_state_dict_strict
from ilo_pl.losses.perceptual import PerceptualLoss
from ilo_pl.policy import no_autocast

__all__ = ["MIN_SIZE", "NETS", "PACKAGE", "STLPIPS", "STLPIPSLoss", "BlurPool2d", "stlpips_network", "weights_path"]

#: The pip distribution that ships the weights, and its import name.
PACKAGE, _MODULE = "stlpips-pytorch", "stlpips_pytorch"
#: The trunks with shipped weights.
NETS = ("alex", "vgg")
#: Smallest image side each trunk takes (a blur pool's reflection padding of 2 needs >= 3 pixels).
MIN_SIZE = {"alex": 21, "vgg": 18}
#: The shipped weights' version folder.
_VERSION = "vST0.0"

# ------------------------------------------------------------------------------ the architecture
# A trunk is five slices; each slice is a list of layers, numbered on through all slices (the
# numbers are the weight files' keys: ``net.slice<s>.<n>.weight``). A layer is
# ("conv", in, out, kernel, padding) | ("relu",) | ("max", kernel) | ("blur", channels).
_Layer = Tuple[Union[str, int], ...]


def _vgg_block(c_in: int, c_out: int, convs: int, pool: bool) -> List[_Layer]:
    layers: List[_Layer] = [("max", 2), ("blur", c_in)] if pool else []
    for i in range(convs):
        layers += [("conv", c_in if i == 0 else c_out, c_out, 3, 1), ("relu",)]
    return layers


_TRUNKS: Dict[str, List[List[_Layer]]] = {
    "alex": [
        [("conv", 3, 64, 11, 2), ("blur", 64), ("relu",)],
        [("max", 3), ("blur", 64), ("conv", 64, 192, 5, 2), ("relu",)],
        [("max", 3), ("blur", 192), ("conv", 192, 384, 3, 1), ("relu",)],
        [("conv", 384, 256, 3, 1), ("relu",)],
        [("conv", 256, 256, 3, 1), ("relu",)],
    ],
    "vgg": [
        _vgg_block(3, 64, 2, pool=False),
        _vgg_block(64, 128, 2, pool=True),
        _vgg_block(128, 256, 3, pool=True),
        _vgg_block(256, 512, 3, pool=True),
        _vgg_block(512, 512, 3, pool=True),
    ],
}


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection padding, then a depthwise blur with stride 2.

    The filter is a buffer named ``filt`` ``[C, 1, k, k]`` (the weight files
    hold it); it starts as the normalised binomial filter of size ``k``.

    Args:
        channels: number of channels ``C``.
        size: filter side ``k`` (ST-LPIPS: 3, i.e. ``[1, 2, 1]``).
        pad: reflection padding on every side (ST-LPIPS: ``k - 1``).
        stride: the downsampling factor.
    """

    def __init__(self, channels: int, size: int = 3, pad: Optional[int] = None, stride: int = 2) -> None:
        super().__init__()
        row = torch.tensor([_binomial(size - 1, i) for i in range(size)], dtype=torch.float32)
        kernel = row[:, None] * row[None, :]
        self.register_buffer("filt", (kernel / kernel.sum()).expand(channels, 1, size, size).clone())
        self.pad = size - 1 if pad is None else pad
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(padded, self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"channels={self.filt.shape[0]}, size={self.filt.shape[-1]}, pad={self.pad}, stride={self.stride}"


def _binomial(n: int, k: int) -> int:
    out = 1
    for i in range(k):
        out = out * (n - i) // (i + 1)
    return out


def _layer(spec: _Layer) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, c_in, c_out, k, pad = spec
        return nn.Conv2d(int(c_in), int(c_out), kernel_size=int(k), stride=1, padding=int(pad))
    if kind == "relu":
        return nn.ReLU()
    if kind == "max":
        return nn.MaxPool2d(kernel_size=int(spec[1]), stride=1)
    if kind == "blur":
        return BlurPool2d(int(spec[1]))
    raise ValueError(f"unknown layer {spec!r}")  # pragma: no cover - the specs above


class _Trunk(nn.Module):
    """Five slices; :meth:`forward` returns each slice's output."""

    def __init__(self, slices: Sequence[Sequence[_Layer]]) -> None:
        super().__init__()
        n = 0
        for s, layers in enumerate(slices, start=1):
            seq = nn.Sequential()
            for spec in layers:
                seq.add_module(str(n), _layer(spec))
                n += 1
            self.add_module(f"slice{s}", seq)
        self.num_slices = len(slices)

    def forward(self, x: Tensor) -> List[Tensor]:
        feats = []
        for s in range(1, self.num_slices + 1):
            x = getattr(self, f"slice{s}")(x)
            feats.append(x)
        return feats


class _Scaling(nn.Module):
    """``(x - shift) / scale`` with per-channel buffers (from the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)


class _Head(nn.Module):
    """A layer's linear head: ``model.1`` is a 1x1 convolution to one channel, without bias.

    ``model.0`` is the slot of the dropout the heads were trained behind (the
    identity at evaluation).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.model[1].weight.to(x.dtype))


def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
    """``f`` divided by its channel norm (plus ``eps``); the norm's gradient stays finite at ``f = 0``."""
    norm = torch.sqrt(f.pow(2).sum(dim=1, keepdim=True) + eps * eps)
    return f / (norm + eps)


class STLPIPS(nn.Module):
    """The ST-LPIPS network: ``forward(x, y) -> [B]`` distances of two image batches in ``[-1, 1]``.

    Built with random trunk and heads: load the shipped weights with
    :func:`stlpips_network` (or ``load_state_dict`` a file of the same keys).
    The trunk runs in the inputs' dtype (and under autocast, if on); the
    normalisation and heads in float32 or float64, with autocast off.
    Returns float32 for float32 and half-precision inputs, float64 for float64.

    Args:
        net: ``"alex"`` or ``"vgg"``.

    Raises:
        ValueError: unknown ``net``.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown ST-LPIPS network {net!r}; choose one of {', '.join(map(repr, NETS))}")
        self.net_name = net
        self.scaling_layer = _Scaling()
        self.net = _Trunk(_TRUNKS[net])
        channels = [_out_channels(layers, prev) for layers, prev in _slice_inputs(_TRUNKS[net])]
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", _Head(c))
        self.num_layers = len(channels)

    @property
    def min_size(self) -> int:
        """The smallest image side the trunk takes."""
        return MIN_SIZE[self.net_name]

    def layer_distances(self, x: Tensor, y: Tensor) -> List[Tensor]:
        """Each layer's spatially averaged head output ``[B]`` (their sum is the distance).

        Raises:
            ValueError: images of other shapes, not RGB, or smaller than :attr:`min_size`.
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"ST-LPIPS compares two RGB image batches of the same shape [B, 3, H, W]; got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"ST-LPIPS ({self.net_name}) needs images of at least {self.min_size}x{self.min_size}; "
                f"got {tuple(x.shape[-2:])}: resize them first"
            )
        b = x.shape[0]
        # One pass of the trunk over both batches (the same numbers as two passes).
        feats = self.net(self.scaling_layer(torch.cat([x, y.to(x.dtype)])))
        out = []
        # Normalisation and heads in at least float32, autocast or not: a float16 channel norm
        # overflows (or underflows to the NaN-gradient point) easily.
        with no_autocast(x):
            for i, f in enumerate(feats):
                if f.dtype in (torch.float16, torch.bfloat16):
                    f = f.float()
                diff = (_unit(f[:b]) - _unit(f[b:])).pow(2)
                out.append(getattr(self, f"lin{i}")(diff).mean(dim=(1, 2, 3)))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        layers = self.layer_distances(x, y)
        total = layers[0]
        for d in layers[1:]:
            total = total + d
        return total

    def train(self, mode: bool = True) -> "STLPIPS":
        # A frozen metric: always in eval mode.
        return super().train(False)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}"


def _slice_inputs(slices: Sequence[Sequence[_Layer]]) -> List[Tuple[Sequence[_Layer], int]]:
    out, prev = [], 3
    for layers in slices:
        out.append((layers, prev))
        prev = _out_channels(layers, prev)
    return out


def _out_channels(layers: Sequence[_Layer], c_in: int) -> int:
    c = c_in
    for spec in layers:
        if spec[0] == "conv":
            c = int(spec[2])
    return c


# ------------------------------------------------------------------------------------ weights
def weights_path(net: str) -> Path:
    """The shipped weight file of ST-LPIPS ``net`` inside the installed ``stlpips-pytorch`` package.

    Found with :mod:`importlib.resources` (the package's own modules are
    never imported: its ``__init__`` is empty).

    Raises:
        ValueError: unknown ``net``.
        FileNotFoundError: the package is not installed, or has no such file;
            the message says what to install.
    """
    if net not in NETS:
        raise ValueError(f"unknown ST-LPIPS network {net!r}; choose one of {', '.join(map(repr, NETS))}")
    name = f"{net}_shift_tolerant.pth"
    fix = (f"install the package that ships the ST-LPIPS weights: pip install {PACKAGE}==0.0.2 --no-deps "
           "(it is an ilo-pl dependency; scripts/bootstrap.sh installs it), or pass weights=<path to "
           f"{name}>")
    if importlib.util.find_spec(_MODULE) is None:
        raise FileNotFoundError(f"the ST-LPIPS '{net}' weights come from the {PACKAGE} package, which is not "
                                f"installed: {fix}")
    resource = importlib.resources.files(_MODULE).joinpath("weights", _VERSION, name)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"the ST-LPIPS '{net}' weights file is not in the installed {PACKAGE} package "
                                f"(looked for {path}): {fix}")
    return path


def stlpips_network(net: str = "alex", weights: Union[str, Path, None] = None) -> STLPIPS:
    """An :class:`STLPIPS` network with its trained weights: frozen, in eval mode, on the CPU.

    Args:
        net: ``"alex"`` or ``"vgg"``.
        weights: a weight file of the same keys; default the one shipped in
            ``stlpips-pytorch`` (:func:`weights_path`).

    Raises:
        FileNotFoundError: no weight file (naming the package to install).
        ValueError: unknown ``net``, or a file whose keys or shapes do not fit.
    """
    model = STLPIPS(net)
    path = weights_path(net) if weights is None else Path(weights)
    sd = load_checkpoint(path, f"ST-LPIPS '{net}' weights file")
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not the state dict of ST-LPIPS '{net}'")
    load_state_dict_strict(model, sd, f"{path} does not fit ST-LPIPS '{net}'")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------- loss term
class STLPIPSLoss(PerceptualLoss):
    """Per-sample ST-LPIPS between the generated image and the observation, in image or observation space.

    The same pairing as :class:`~ilo_pl.losses.LPIPSLoss` (``space``,
    ``resize``, ``detach_reference``; see :mod:`ilo_pl.losses.perceptual`):
    image space against the superimposed observation (inpainting, denoising),
    observation space ``A(G(v))`` against ``y`` for super-resolution. Use it
    under its own loss name, e.g. ``loss_weights: {mse: 1.0, stlpips: 1.0}``
    with ``losses: {stlpips: {class_path: ilo_pl.losses.STLPIPSLoss}}``.

    Args:
        net: trunk, ``"vgg"`` (default, like the ILO paper's LPIPS loss) or
            ``"alex"`` (cheaper; the usual metric backbone).
        resize: side both images are resized to (bilinear, antialiased);
            ``None`` keeps their size (then at least 21x21 for AlexNet,
            18x18 for VGG).
        detach_reference: treat the superimposed observation as a constant
            target (its generated-pixel fill gets no gradient through it).
        space: ``"auto"``, ``"image"`` or ``"observation"``.
        weights: a weight file; default the one shipped in ``stlpips-pytorch``.

    Raises:
        ValueError: unknown ``net`` or ``space``, or bad ``resize``; at call
            time, measurements the chosen space cannot compare.
        FileNotFoundError: if ``stlpips-pytorch`` (or the given file) is missing.

    Example:
        >>> from ilo_pl.losses.base import LossContext
        >>> from ilo_pl.operators.base import Identity
        >>> loss = STLPIPSLoss(net="alex", resize=None)
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> ctx = LossContext(image=x, measured=x, observation=x, operator=Identity(), state={}, groups={}, split=0)
        >>> loss(ctx)
        tensor([0.])
    """

    metric = "ST-LPIPS"
    loss_key = "stlpips"

    def __init__(
        self,
        net: str = "vgg",
        resize: Optional[int] = 256,
        detach_reference: bool = True,
        space: str = "auto",
        weights: Union[str, Path, None] = None,
    ) -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown ST-LPIPS network {net!r}; choose one of {', '.join(map(repr, NETS))}")
        self.min_size = MIN_SIZE[net]
        self._init_pairing(resize, detach_reference, space)
        self.stlpips = stlpips_network(net, weights)
        self.net = net
        self.weights = None if weights is None else str(weights)
        super().train(False)

    def network_distance(self, image: Tensor, reference: Tensor) -> Tensor:
        """ST-LPIPS ``[B]`` of two prepared batches."""
        return self.stlpips(image, reference)

    def extra_repr(self) -> str:
        return f"net={self.net!r}, resize={self.resize}, space={self.space!r}"
