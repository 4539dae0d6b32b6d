"""Robust ImageNet classifiers of the MadryLab ``robustness`` library, on modern torchvision.

This is the one module that knows about ``robustness`` (1.2, 2020). Two
incompatibilities are handled here:

* ``robustness.imagenet_models`` imports ``torchvision.models.utils``, which
  modern torchvision no longer has. :func:`install_torchvision_shim` puts a
  stand-in module (exporting ``load_state_dict_from_url`` from ``torch.hub``)
  into ``sys.modules`` before ``robustness`` is imported.
* ``robustness.model_utils.make_and_restore_model`` moves the model with a
  hard-coded ``.cuda()``, loads checkpoints with ``torch.load`` (full pickle,
  ``dill``) and wraps the net in an ``AttackerModel`` whose attack path also
  calls ``.cuda()``. We never import ``model_utils`` or ``attacker``: we build
  the architecture from ``robustness.imagenet_models`` ourselves, read the
  checkpoint with ``weights_only=True`` and keep everything on the device the
  caller chooses (CPU or GPU).

MadryLab checkpoint format: a dict ``{"model": state_dict, "epoch": N, ...}``
(legacy files use ``"state_dict"``) whose state dict has the keys of an
``AttackerModel`` wrapped in ``DataParallel``:

* ``module.model.<k>`` -- the classifier's weights (what we load);
* ``module.attacker.model.<k>`` -- the same weights again (ignored);
* ``module.normalizer.new_mean`` / ``module.normalizer.new_std`` -- the input
  normalisation (``[3, 1, 1]``; we use it);
* ``module.attacker.normalize.*`` -- the same again (ignored).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ilo_pl.checkpoints import CheckpointError, load_checkpoint
from ilo_pl.classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, load_state_dict_strict

_SHIM = "torchvision.models.utils"


def install_torchvision_shim() -> None:
    """Make ``import torchvision.models.utils`` work again (idempotent).

    Only installs the stand-in when torchvision does not provide the module.
    """
    if _SHIM in sys.modules:
        return
    try:
        __import__(_SHIM)
        return
    except ImportError:
        pass
    import torchvision.models

    shim = types.ModuleType(_SHIM)
    shim.__doc__ = "Stand-in for the torchvision.models.utils of torchvision < 0.13 (ilo_pl shim)."
    shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    sys.modules[_SHIM] = shim
    torchvision.models.utils = shim  # type: ignore[attr-defined]


def imagenet_models() -> types.ModuleType:
    """``robustness.imagenet_models`` (the ImageNet model zoo), imported through the shim.

    Raises:
        ImportError: if ``robustness`` is not installed.
    """
    install_torchvision_shim()
    try:
        import robustness.imagenet_models as zoo
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] == "robustness":
            raise ImportError(
                "robust classifiers need the MadryLab 'robustness' package: pip install robustness"
            ) from err
        raise
    return zoo


def available_archs() -> List[str]:
    """Architecture names of ``robustness.imagenet_models`` (e.g. ``resnet50``)."""
    zoo = imagenet_models()
    return sorted(n for n in getattr(zoo, "__all__", dir(zoo)) if n[:1].islower() and callable(getattr(zoo, n)))


def build_arch(arch: str, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised ``robustness.imagenet_models`` network (never downloads weights).

    Raises:
        ValueError: for an architecture the zoo does not have (lists the valid ones).
    """
    names = available_archs()
    if arch not in names:
        raise ValueError(f"unknown robustness ImageNet architecture {arch!r}; choose one of {names}")
    return getattr(imagenet_models(), arch)(num_classes=num_classes, pretrained=False)


def read_madrylab_checkpoint(
    path: Union[str, Path], allow_pickle: bool = False
) -> Tuple[Dict[str, Tensor], Optional[Tensor], Optional[Tensor], Optional[int]]:
    """Read a MadryLab checkpoint: the classifier's state dict, mean, std and epoch.

    Args:
        path: the ``.pt``/``.ckpt`` file.
        allow_pickle: fall back to a full (unsafe) unpickling when the file
            holds Python objects that ``weights_only=True`` refuses. Only for
            files you trust.

    Returns:
        ``(state_dict, mean, std, epoch)``; ``mean``/``std`` are ``[3]`` or
        ``None`` when the checkpoint has no normaliser (a bare state dict).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be read with ``weights_only=True`` (and
            ``allow_pickle`` is off) or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"robustness checkpoint {path} does not exist; download a MadryLab ImageNet model "
            "(e.g. imagenet_l2_3_0.pt, see docs/classifier.md) and pass its path"
        )
    try:
        ckpt = load_checkpoint(path, "MadryLab robustness checkpoint")
    except CheckpointError as err:
        if err.refused is None:
            raise  # not a PyTorch file at all (corrupt, truncated, random bytes): nothing to unpickle
        if not allow_pickle:
            raise ValueError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses ({err.refused}). "
                "If you trust the file, pass allow_pickle=True (or re-save only "
                "{'model': state_dict} once)"
            ) from None
        # The caller's explicit opt-in, for a real pickle only (documented: files you trust).
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a MadryLab checkpoint: expected a dict, got {type(ckpt).__name__}")
    sd = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(
            f"{path} is not a MadryLab checkpoint: expected {{'model': state_dict, 'epoch': N}}"
        )
    # DataParallel prefix
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    mean = sd.get("normalizer.new_mean")
    std = sd.get("normalizer.new_std")
    if any(k.startswith("model.") for k in sd):
        net_sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    else:
        # A bare state dict of the architecture (no AttackerModel wrapper).
        net_sd = {k: v for k, v in sd.items() if not k.startswith(("attacker.", "normalizer."))}
    epoch = ckpt.get("epoch")
    return (
        net_sd,
        None if mean is None else mean.flatten().float(),
        None if std is None else std.flatten().float(),
        int(epoch) if isinstance(epoch, (int, float)) or torch.is_tensor(epoch) else None,
    )


def load_robust_classifier(
    checkpoint: Union[str, Path],
    arch: str = "resnet50",
    num_classes: int = 1000,
    input_size: int = 224,
    allow_pickle: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageClassifier:
    """A robust ImageNet classifier from a MadryLab checkpoint, frozen and device-agnostic.

    Replaces ``robustness.model_utils.make_and_restore_model(arch=...,
    dataset=ImageNet(...), resume_path=...)`` without its ``.cuda()`` and
    unsafe unpickling.

    Args:
        checkpoint: the MadryLab ``.pt`` file (see the module docstring).
        arch: the ``robustness.imagenet_models`` architecture the file was trained with.
        num_classes: number of classes (1000 for ImageNet).
        input_size: the training resolution (224 for the ImageNet models).
        allow_pickle: see :func:`read_madrylab_checkpoint`.
        device: where to put the network (default CPU).

    Raises:
        FileNotFoundError: if the checkpoint is missing.
        ValueError: for an unknown arch, or a checkpoint of another architecture
            (names the missing/unexpected keys).
    """
    net_sd, mean, std, epoch = read_madrylab_checkpoint(checkpoint, allow_pickle=allow_pickle)
    net = build_arch(arch, num_classes=num_classes)
    load_state_dict_strict(
        net, net_sd, f"{checkpoint} is not a robustness '{arch}' checkpoint (is `arch` right?)"
    )
    clf = ImageClassifier(
        _LogitsOnly(net),
        mean=IMAGENET_MEAN if mean is None else mean.tolist(),
        std=IMAGENET_STD if std is None else std.tolist(),
        input_size=input_size,
        num_classes=num_classes,
        name=f"robustness-{arch}" + ("" if epoch is None else f"@epoch{epoch}"),
    )
    return clf.to(device) if device is not None else clf


class _LogitsOnly(nn.Module):
    """Call a ``robustness`` net with its defaults (``with_latent=False``): logits only.

    Keeps the net under the attribute ``model`` so ``state_dict`` keys read
    ``net.model.<k>`` like the checkpoint's ``module.model.<k>``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        # Some zoo nets return (logits, latent) when asked; keep the logits.
        return out[0] if isinstance(out, tuple) else out


__all__ = [
    "available_archs",
    "build_arch",
    "imagenet_models",
    "install_torchvision_shim",
    "load_robust_classifier",
    "read_madrylab_checkpoint",
]
