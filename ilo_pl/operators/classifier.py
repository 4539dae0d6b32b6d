"""Classifier guidance: the "measurement" of an image is a classifier's logits.

The observation ``y`` is a target class per problem, and the measurement error
is the per-sample cross entropy ``-log p(y | x)``. So the engine's MSE term and
its best-iterate tracking both minimise ``-log p(y | x)`` with no special case.

* :class:`ClassifierOperator` -- ``A(x)`` = logits ``[B, K]`` of a frozen
  classifier applied to the generated image with the classifier's own
  preprocessing (``[-1, 1]`` -> ``[0, 1]``, bilinear antialiased resize,
  mean/std normalisation; see :class:`~ilo_pl.classifiers.ImageClassifier`).
* :class:`ClassGuidance` -- the spec configs name; its
  :meth:`~ClassGuidance.target_observation` gives the observation batch.

Observations: a ``LongTensor [B]`` of class indices. A float tensor ``[B]`` of
integral values (``3.0``) is accepted too (data pipelines often stack
observations as floats); non-integral values are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.classifiers import ImageClassifier, build_classifier
from ilo_pl.operators.base import Operator, OperatorSpec


def as_class_indices(y: Tensor, num_classes: Optional[int] = None) -> Tensor:
    """Class indices ``[B]`` (int64) from a long or integral float tensor ``[B]``.

    Raises:
        TypeError: if ``y`` is not a tensor, or is boolean/complex.
        ValueError: if ``y`` is not 1-D, holds non-integral or non-finite
            values, or (with ``num_classes``) an index outside ``0..K-1``.
    """
    if not torch.is_tensor(y):
        raise TypeError(f"class observations must be a tensor of class indices [B]; got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"class observations must be integer (or integral float) indices; got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(
            f"class observations must be a 1-D tensor [B] of class indices; got shape {tuple(y.shape)}"
        )
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise ValueError("the class observation contains NaN or inf; give integer class indices")
        if not torch.equal(y, y.round()):
            bad = y[y != y.round()][0].item()
            raise ValueError(f"class observation {bad} is not an integer class index")
        y = y.round()
    y = y.long()
    if num_classes is not None and y.numel():
        bad = y[(y < 0) | (y >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"class index {int(bad[0])} is out of range for a classifier with K={num_classes} "
                f"classes (valid indices are 0..{num_classes - 1})"
            )
    return y


class ClassifierOperator(Operator):
    """``A(x)`` = logits ``[B, K]`` of a frozen classifier on generator images in ``[-1, 1]``.

    Args:
        classifier: an :class:`~ilo_pl.classifiers.ImageClassifier` (carries its
            preprocessing), or any ``nn.Module`` mapping *normalised* images to
            logits, in which case ``mean`` and ``std`` are required.
        mean: per-channel mean on ``[0, 1]`` images (only for a bare module).
        std: per-channel std on ``[0, 1]`` images (only for a bare module).
        input_size: input size the bare module expects (``None``: no resize).
        num_classes: ``K`` of a bare module, when known.
        noise_model: noise on the logits (``None``, the default: none).

    Raises:
        TypeError: if ``classifier`` is not an ``nn.Module``.
        ValueError: if a bare module comes without ``mean``/``std``, or an
            ``ImageClassifier`` comes with preprocessing arguments.
    """

    def __init__(
        self,
        classifier: nn.Module,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        input_size: Union[int, Sequence[int], None] = None,
        num_classes: Optional[int] = None,
        *,
        noise_model: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(noise_model=noise_model)
        if isinstance(classifier, ImageClassifier):
            if mean is not None or std is not None or input_size is not None:
                raise ValueError(
                    "this ImageClassifier already carries its preprocessing; do not pass "
                    "mean/std/input_size (or pass its bare network instead)"
                )
        elif isinstance(classifier, nn.Module):
            if mean is None or std is None:
                raise ValueError(
                    f"a bare classifier module ({type(classifier).__name__}) needs the mean and std "
                    "its inputs were normalised with (e.g. ImageNet's mean=[0.485, 0.456, 0.406], "
                    "std=[0.229, 0.224, 0.225]) and its input_size"
                )
            classifier = ImageClassifier(classifier, mean, std, input_size, num_classes)
        else:
            raise TypeError(
                f"ClassifierOperator needs an nn.Module classifier; got {type(classifier).__name__}"
            )
        self.classifier = classifier

    @property
    def num_classes(self) -> Optional[int]:
        """``K`` when the classifier declares it (else found from the logits)."""
        return self.classifier.num_classes

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_image(x)
        return self.classifier(x)

    def measurement_error(self, Ax: Tensor, y: Tensor) -> Tensor:  # noqa: N803
        """Per-sample cross entropy ``-log p(y | x)`` of logits ``Ax`` ``[B, K]``: ``[B]``."""
        if Ax.dim() != 2:
            raise ValueError(f"ClassifierOperator measurements are logits [B, K]; got shape {tuple(Ax.shape)}")
        target = as_class_indices(y, Ax.shape[1]).to(Ax.device)
        if target.shape[0] != Ax.shape[0]:
            raise ValueError(f"{Ax.shape[0]} logits rows but {target.shape[0]} class observations")
        return F.cross_entropy(Ax, target, reduction="none")

    def superimpose(self, x: Tensor, y: Tensor) -> None:
        """Class labels are not images: there is nothing to superimpose."""
        return None

    @torch.no_grad()
    def start_report(self, start: Tensor, final: Tensor, y: Tensor) -> Dict[str, Tensor]:
        """The target class's probability at the start image and at the result, and the distance between them.

        Args:
            start: the start images ``[B, C, H, W]`` in ``[-1, 1]``.
            final: the results ``[B, C, H, W]``.
            y: the target classes ``[B]``.

        Returns:
            ``[B]`` float tensors (on the CPU): ``target_prob_start`` and
            ``target_prob`` (``p(y | x)``, ``softmax`` of the logits;
            ``target_prob`` is ``exp(-measurement_loss)``), and ``start_mse``,
            the mean squared distance between result and start on the
            ``[-1, 1]`` scale, both clamped to ``[-1, 1]`` as in the PNGs
            (the same scale as ``true_mse`` in other tasks).
        """
        dev = self._device()
        start, final = start.to(dev, torch.float32), final.to(dev, torch.float32)
        target = as_class_indices(y).to(dev)[:, None]
        p0 = self.probabilities(start).gather(1, target)[:, 0]
        p1 = self.probabilities(final).gather(1, target)[:, 0]
        dist = (final.clamp(-1, 1) - start.clamp(-1, 1)).pow(2).flatten(1).mean(1)
        return {"target_prob_start": p0.cpu(), "target_prob": p1.cpu(), "start_mse": dist.cpu()}

    def probabilities(self, x: Tensor) -> Tensor:
        """``softmax(A(x))``: class probabilities ``[B, K]`` of images ``x``."""
        return self.A(x).softmax(-1)

    def predict(self, x: Tensor) -> Tensor:
        """The predicted class ``[B]`` of images ``x``."""
        return self.A(x).argmax(-1)

    def check_observation(self, y: Tensor, x_like: Tensor) -> None:
        """Check ``y`` is ``[B]`` class indices, each in ``0..K-1``.

        Raises:
            TypeError/ValueError: naming the problem (for a bad index: the index and ``K``).
        """
        k = self.num_classes
        if k is None:
            with torch.no_grad():
                k = int(self.A(x_like[:1]).shape[1])
        as_class_indices(y, k)
        if y.shape[0] != x_like.shape[0]:
            raise ValueError(
                f"{y.shape[0]} class observations for {x_like.shape[0]} images; give one class per problem"
            )


class ClassGuidance(OperatorSpec):
    """Steer the generated image towards a class of a classifier.

    Args:
        target: the class index (e.g. an ImageNet class, ``0..999``).
        classifier: ``"efficientnet-lite0"`` (offline, default), ``"robust"``
            (a MadryLab checkpoint: give ``checkpoint`` and ``arch``), an
            :class:`~ilo_pl.classifiers.ImageClassifier`, or a bare
            ``nn.Module`` with ``mean``/``std``/``input_size``.
        checkpoint: MadryLab checkpoint file (``classifier="robust"``).
        arch: its ``robustness.imagenet_models`` architecture.
        mean: normalisation mean (bare modules only).
        std: normalisation std (bare modules only).
        input_size: the bare module's input size.

    The classifier is built once and shared by every problem (``shared = True``).
    The observation of every problem is the target class: :meth:`observe`
    (what the data module calls) and :meth:`target_observation` return it.
    The data set's images are neither measured nor ground truth
    (``ground_truth = False``: no ``<id>_target.png``, no true MSE, PSNR or
    SSIM); the data set only says how many problems there are. A result is
    judged against its start image instead
    (:meth:`ClassifierOperator.start_report`): the target class's
    probability before and after, and the distance to the start.

    Raises:
        ValueError: if ``target`` is negative or not below the classifier's ``K``.
    """

    shared = True
    ground_truth = False

    def __init__(
        self,
        target: int,
        classifier: Union[str, nn.Module] = "efficientnet-lite0",
        checkpoint: Union[str, Path, None] = None,
        arch: str = "resnet50",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        input_size: Union[int, Sequence[int], None] = None,
    ) -> None:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a class index >= 0; got {target!r}")
        self.target = int(target)
        if isinstance(classifier, str):
            key = classifier.lower().replace("_", "-")
            if key in ("robust", "robustness", "madrylab"):
                if checkpoint is None:
                    raise ValueError(
                        "classifier='robust' needs checkpoint=<MadryLab .pt file> (see docs/classifier.md)"
                    )
                classifier = build_classifier(key, checkpoint=checkpoint, arch=arch)
            else:
                classifier = build_classifier(key)
        self.operator = ClassifierOperator(classifier, mean=mean, std=std, input_size=input_size)
        k = self.operator.num_classes
        if k is not None and self.target >= k:
            raise ValueError(
                f"class index {self.target} is out of range for a classifier with K={k} classes "
                f"(valid indices are 0..{k - 1})"
            )

    def build(
        self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None
    ) -> ClassifierOperator:
        """The (shared) classifier operator; ``image_shape`` must have 3 channels."""
        channels = int(self.operator.classifier.mean.shape[1])
        if image_shape[0] != channels:
            raise ValueError(
                f"the classifier takes {channels}-channel images but the generator makes "
                f"{image_shape[0]}-channel images"
            )
        return self.operator

    def observe(self, op: Operator, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The observation of a problem is the target class, whatever its image ``x``: ``LongTensor [B]``."""
        return self.target_observation(x.shape[0])

    def target_observation(self, batch_size: int) -> Tensor:
        """The observation of ``batch_size`` problems: ``LongTensor [batch_size]`` filled with ``target``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        return torch.full((int(batch_size),), self.target, dtype=torch.long)
