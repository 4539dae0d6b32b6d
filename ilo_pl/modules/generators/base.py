"""The generator split protocol every ILO generator implements.

A generator is an ordered list of blocks ``G = B_L o ... o B_1``. Split point
``k`` (``0 <= k <= num_splits``) sits after block ``k``; the *state* at split
``k`` is a dict of named tensors, each with a leading batch dimension, that
holds everything the remaining blocks need:

* ``k = 0``: the input variables (e.g. ``{"z": [B, 100, 1, 1]}`` for the DCGAN,
  or W+ latents and noises for StyleGAN-2);
* ``k > 0``: the activation after block ``k`` plus whatever later blocks still
  read (StyleGAN-2: the accumulated RGB skip, the W+ rows and the noises that
  are not consumed yet).

The protocol is three methods:

* :meth:`SplitGenerator.init_variables` -- the state at split 0 for a batch;
* :meth:`SplitGenerator.advance` -- ``G1``: the state at split ``k`` from the
  state at an earlier split ``j`` (usually ``j = 0``);
* :meth:`SplitGenerator.render` -- ``G2``: the image from the state at ``k``.

The contract, tested for every generator: ``render(advance(s, 0, k), k) ==
render(s, 0)`` for every ``k`` and every batch. Images are in ``[-1, 1]``,
``[B, C, H, W]``.

Each state entry belongs to a *group* (:meth:`SplitGenerator.groups`) that
stage configs refer to: ``"state"`` (the intermediate activation),
``"latent"`` (input latents, W+ rows), ``"noise"`` (per-layer noise maps) and
``"skip"`` (StyleGAN-2's accumulated RGB skip: carried so that ``G2(G1(v)) ==
G(v)``, but a group of its own so that freeing ``state`` does not free it) and
``"condition"`` (a class-conditional generator's per-problem class label,
carried unchanged to every split; never optimised). Entries in :meth:`SplitGenerator.sphere_variables`
live on a sphere and get :class:`~ilo_pl.callbacks.SphereProjection`.

Class-conditional generators (:attr:`SplitGenerator.num_classes` ``> 0``)
take one class label per problem: ``init_variables(B, generator, labels=[...])``
puts them into the state (entry ``class_label``, group ``condition``), so a
state renders the same alone or in any batch and a saved solution carries its
class. :meth:`SplitGenerator.check_labels` validates labels for any generator
(an unconditional one refuses them).
"""

from __future__ import annotations

import abc
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

State = Dict[str, Tensor]

#: Groups a state entry can belong to (what stage configs name in ``free`` and
#: ``radius``; :meth:`ilo_pl.stages.Stage.radius_of` reads this tuple too).
GROUPS = ("state", "latent", "noise", "skip", "condition")


class SplitGenerator(nn.Module, abc.ABC):
    """A frozen generator that can be split at any of its split points.

    Subclasses set :attr:`num_splits`, :attr:`image_shape` and implement the
    abstract methods. Weights are frozen (``requires_grad=False``) and the
    module stays in eval mode: ILO optimises the *state*, never the weights.
    """

    #: Number of split points after the input (valid ``k`` are ``0..num_splits``).
    num_splits: int = 0
    #: ``(C, H, W)`` of the generated images.
    image_shape: Tuple[int, int, int] = (3, 0, 0)
    #: Number of classes of a class-conditional generator (0: unconditional). A
    #: conditional generator's ``init_variables`` also takes ``labels=`` (one per problem).
    num_classes: int = 0

    # -- the protocol -----------------------------------------------------
    @abc.abstractmethod
    def init_variables(
        self, batch_size: int, generator: Optional[torch.Generator] = None
    ) -> State:
        """Draw the input variables (the state at split 0) for a batch.

        Args:
            batch_size: number of independent problems ``B``.
            generator: a CPU ``torch.Generator`` so that draws are seeded; the
                result is moved to the generator module's device.

        Returns:
            A dict of ``[B, ...]`` float tensors.
        """

    @abc.abstractmethod
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        """``G1``: map the state at split ``start`` to the state at ``stop``.

        Args:
            state: the state at split ``start``.
            start: split index of ``state``.
            stop: target split index, ``start <= stop <= num_splits``.
        """

    @abc.abstractmethod
    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        """``G2``: the image ``[B, C, H, W]`` in ``[-1, 1]`` from the state at ``split``."""

    @abc.abstractmethod
    def groups(self, split: int) -> Dict[str, str]:
        """Map each state entry name at ``split`` to its group (see :data:`GROUPS`)."""

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        """Entries at ``split`` that live on a sphere, with the dims the norm runs over.

        The sphere radius is ``sqrt(numel over those dims)`` (the norm of a
        standard Gaussian of that size). Default: none.
        """
        return {}

    def identity(self) -> Dict[str, object]:
        """A JSON-able description of the generator: class, weights digest and render settings.

        Saved beside each solution so it is regenerated by the same network
        configured the same way: ``{"class", "weights_sha1", "setting.<name>"
        for each entry of`` :meth:`render_settings` ``}``.
        """
        # Weights are frozen, so the digest is computed once.
        digest = self.__dict__.get("_weights_digest")
        if digest is None:
            digest = self.__dict__["_weights_digest"] = _state_dict_digest(self)
        out: Dict[str, object] = {"class": f"{type(self).__module__}.{type(self).__qualname__}", "weights_sha1": digest}
        out.update({f"setting.{k}": v for k, v in self.render_settings().items()})
        return out

    def render_settings(self) -> Dict[str, object]:
        """Constructor settings outside the weights that change what :meth:`render` makes of a state.

        Part of :meth:`identity`, so a solution is not regenerated by a
        differently configured generator. Settings that only change where a
        solve starts (not how a state renders) do not belong here. Default: none.
        """
        return {}

    def start_settings(self) -> Dict[str, object]:
        """Constructor settings that change where a solve starts, not how a state renders.

        Recorded in a run's manifest (``generator`` section, as ``start.<name>``)
        so that a run folder is not resumed with problems that would start
        elsewhere; not part of :meth:`identity` (a saved state renders the same).
        Only settings away from their defaults belong here, so manifests written
        before a setting existed still match. Default: none.
        """
        return {}

    def check_labels(self, labels: Optional[Sequence[int]], batch_size: Optional[int] = None) -> Optional[List[int]]:
        """Validate per-problem class labels: what ``init_variables(..., labels=...)`` will use.

        This default is for unconditional generators: no labels (``None``) is
        fine, any labels are refused. Conditional generators override it (range,
        count, the default class when ``labels`` is ``None``).

        Args:
            labels: one class per problem, or ``None``.
            batch_size: the number of problems the labels are for (checked when given).

        Returns:
            The labels to use (``None`` for an unconditional generator).

        Raises:
            ValueError: naming the generator, for labels given to an unconditional one.
        """
        if labels is None:
            return None
        shown = list(labels)[:5]
        raise ValueError(
            f"{type(self).__name__} is unconditional (it has no class input), but class labels {shown} were "
            "given; leave them out (data.class_labels, ProblemBatch.labels)"
        )

    # -- conveniences -------------------------------------------------------
    def forward(self, state: Mapping[str, Tensor]) -> Tensor:  # noqa: D401
        """The full generator ``G(v) = render(v, 0)``."""
        return self.render(state, 0)

    def check_split(self, split: int) -> None:
        """Raise a ``ValueError`` naming the valid range if ``split`` is out of it."""
        if not isinstance(split, int) or not 0 <= split <= self.num_splits:
            raise ValueError(
                f"split {split!r} is out of range for {type(self).__name__}: "
                f"valid split points are 0..{self.num_splits}"
            )

    def check_advance(self, start: int, stop: int) -> None:
        """Raise a ``ValueError`` unless ``0 <= start <= stop <= num_splits`` (what ``advance`` takes)."""
        self.check_split(start)
        self.check_split(stop)
        if stop < start:
            raise ValueError(f"cannot advance from split {start} back to split {stop}")

    def freeze(self) -> "SplitGenerator":
        """Freeze the weights and put the network in eval mode (returns ``self``)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "SplitGenerator":
        # A frozen generator never leaves eval mode: BatchNorm must keep its
        # running statistics even when Lightning calls ``model.train()``.
        return super().train(False)


def _state_dict_digest(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
