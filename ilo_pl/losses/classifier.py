"""``ClassifierLoss``: the classifier-guidance term ``-log p(y | x)`` per sample.

Two ways to use it:

* **With a** :class:`~ilo_pl.operators.classifier.ClassifierOperator` (no
  arguments): the target is the observation and the logits are the
  measurement the engine already computed (``ctx.measured``), so the
  classifier runs once per step. This is the same quantity as ``MeasurementLoss`` on
  that operator; use it when you want the class term under its own name and
  weight.
* **With its own classifier and target** (``ClassifierLoss(classifier,
  target=...)``): steer towards a class while the operator is something else
  (inpainting, denoising, ...); the classifier runs on the generated image.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.losses.base import LossContext, LossTerm
from ilo_pl.operators.classifier import ClassifierOperator, as_class_indices


class ClassifierLoss(LossTerm):
    """Per-sample ``-log p(target | image)``.

    Args:
        classifier: ``None`` to use the problem's
            :class:`~ilo_pl.operators.classifier.ClassifierOperator` and its
            observation; else an :class:`~ilo_pl.classifiers.ImageClassifier`,
            a bare ``nn.Module`` with ``mean``/``std``/``input_size``, or a
            :class:`ClassifierOperator`.
        target: with an own classifier: one class index for every sample, or
            one per sample (a sequence of ``B`` indices).
        mean: normalisation mean of a bare module.
        std: normalisation std of a bare module.
        input_size: input size of a bare module.

    Raises:
        ValueError: an own classifier without ``target`` or a ``target`` without
            a classifier; at call time, no classifier and an operator that is
            not a ``ClassifierOperator``, or a target batch that does not match.
    """

    def __init__(
        self,
        classifier: Optional[nn.Module] = None,
        target: Union[int, Sequence[int], None] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        input_size: Union[int, Sequence[int], None] = None,
    ) -> None:
        super().__init__()
        if classifier is None:
            if target is not None:
                raise ValueError(
                    "ClassifierLoss got a target but no classifier; give classifier=... too, or drop "
                    "target to use the ClassifierOperator's observation"
                )
            self.operator: Optional[ClassifierOperator] = None
            return
        if target is None:
            raise ValueError("ClassifierLoss with its own classifier needs target=<class index or one per sample>")
        if not isinstance(classifier, ClassifierOperator):
            classifier = ClassifierOperator(classifier, mean=mean, std=std, input_size=input_size)
        self.operator = classifier
        t = torch.as_tensor(target)
        t = as_class_indices(t.reshape(-1), self.operator.num_classes)
        self.register_buffer("target", t, persistent=False)

    def forward(self, ctx: LossContext) -> Tensor:
        if self.operator is None:
            if not isinstance(ctx.operator, ClassifierOperator):
                raise ValueError(
                    f"ClassifierLoss without its own classifier needs a ClassifierOperator problem "
                    f"(classifier guidance); the operator is {type(ctx.operator).__name__}. "
                    "Give ClassifierLoss(classifier=..., target=...) instead"
                )
            # The engine's measurement error of a ClassifierOperator is -log p(y | x) already.
            err = getattr(ctx, "measurement_error", None)
            if err is not None:
                return err
            # The operator's noise is the identity: ``measured`` are the logits.
            return ctx.operator.measurement_error(ctx.measured, ctx.observation)
        logits = self.operator.A(ctx.image)
        b = logits.shape[0]
        target = self.target
        if target.numel() == 1:
            target = target.expand(b)
        elif target.numel() != b:
            raise ValueError(
                f"ClassifierLoss has {target.numel()} targets for a batch of {b}; give one target "
                "or one per sample"
            )
        return F.cross_entropy(logits, target.to(logits.device), reduction="none")

    def train(self, mode: bool = True) -> "ClassifierLoss":
        # Holds a frozen classifier: stay in eval mode whatever the parent does.
        return super().train(False)
