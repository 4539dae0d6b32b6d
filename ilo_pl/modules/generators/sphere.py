"""``LatentSphere``: put a generator's input latents on their sphere (PULSE-style) when it declares no sphere.

``ILOModule(sphere=True)`` keeps the variables a generator *declares*
(:meth:`~ilo_pl.modules.generators.base.SplitGenerator.sphere_variables`) on
their spheres. A generator that declares none at split 0 gets, through this
wrapper, every ``latent`` entry of its split-0 state on the sphere of radius
``sqrt(numel)`` over its non-batch dims (the norm of a standard Gaussian of
that size). Everything else is the wrapped generator's; its :meth:`identity`
adds the names of the sphere entries, so a run manifest tells the wrapped
generator from the bare one.

In a config::

    generator:
      class_path: ilo_pl.modules.generators.LatentSphere
      init_args:
        generator: {class_path: my_project.MyGenerator}
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ilo_pl.modules.generators.base import SplitGenerator, State


class LatentSphere(SplitGenerator):
    """``generator`` with its split-0 ``latent`` entries declared as sphere variables.

    Args:
        generator: the generator to wrap. If it declares sphere variables at
            split 0 already, they are kept as they are (nothing is added).

    Raises:
        TypeError: if ``generator`` is not a :class:`SplitGenerator`.
        ValueError: if it declares no sphere and has no ``latent`` entry at split 0.
    """

    def __init__(self, generator: SplitGenerator) -> None:
        super().__init__()
        if not isinstance(generator, SplitGenerator):
            raise TypeError(f"LatentSphere wraps a SplitGenerator; got {type(generator).__name__}")
        self.inner = generator
        self.num_splits = generator.num_splits
        self.image_shape = tuple(generator.image_shape)
        declared = generator.sphere_variables(0)
        if declared:
            self._split0 = dict(declared)
        else:
            # A conditional generator may have no default class: probe with class 0.
            labels = {"labels": [0]} if generator.num_classes > 0 else {}
            probe = generator.init_variables(1, torch.Generator().manual_seed(0), **labels)
            groups = generator.groups(0)
            self._split0 = {k: tuple(range(1, v.dim())) for k, v in probe.items() if groups.get(k) == "latent"}
            if not self._split0:
                raise ValueError(
                    f"{type(generator).__name__} has no `latent` entry at split 0 to put on a sphere "
                    f"(its groups there: {groups})"
                )

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """The wrapped generator's number of classes."""
        return self.inner.num_classes

    def check_labels(self, labels: Optional[Sequence[int]], batch_size: Optional[int] = None) -> Optional[List[int]]:
        return self.inner.check_labels(labels, batch_size)

    def init_variables(
        self, batch_size: int, generator: Optional[torch.Generator] = None, labels: Optional[Sequence[int]] = None
    ) -> State:
        # Labels are passed on only when given: an unconditional generator's init_variables takes none.
        if labels is None:
            return self.inner.init_variables(batch_size, generator)
        return self.inner.init_variables(batch_size, generator, labels=labels)

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        return self.inner.advance(state, start, stop)

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        return self.inner.render(state, split)

    def groups(self, split: int) -> Dict[str, str]:
        return self.inner.groups(split)

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        return dict(self._split0) if split == 0 else self.inner.sphere_variables(split)

    def identity(self) -> Dict[str, object]:
        # The wrapped generator's, plus the spheres: they change results (run manifests tell
        # a wrapped generator from the bare one), not how a state renders.
        return {**self.inner.identity(), "latent_sphere": ",".join(sorted(self._split0))}

    def render_settings(self) -> Dict[str, object]:
        return self.inner.render_settings()

    def start_settings(self) -> Dict[str, object]:
        return self.inner.start_settings()
