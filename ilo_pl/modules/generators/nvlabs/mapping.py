"""What NVIDIA's StyleGAN generators share: the mapping network and everything built on it.

:class:`MappingNetwork` (StyleGAN-2's, also StyleGAN3's: the same layers, keys
and truncation) and :class:`NVLabsGenerator`, the base of
:class:`~ilo_pl.modules.generators.nvlabs.StyleGAN2ADAGenerator` and
:class:`~ilo_pl.modules.generators.nvlabs.StyleGAN3Generator`: their options,
class labels, mapping statistics (``w_avg``, the Gaussian fit), the W+ latent
of the state and NVIDIA's ``G(z, c, ...)`` call. The subclasses add the
synthesis network and the split protocol's layer bookkeeping.

Class labels
------------
A conditional snapshot (``c_dim > 0``) maps ``(z, c)`` to ``w``, ``c`` a
one-hot class. ILO optimises W+ itself, so the class decides where a solve
starts (the initial rows map each problem's ``z`` with its class) and, with
``latent_space="gaussian_fit"``, the prior: each problem's rows go through the
Gaussian fit of its own class. Each problem's class is in its state (entry
``class_label`` ``[B]``, group ``condition``, carried unchanged to every
split), so a problem renders the same alone or in any batch, and a saved
solution regenerates with its class. Labels come per problem
(``init_variables(B, g, labels=[...])``, from the data's ``class_labels``) or
from the constructor's ``class_label`` (one class for every problem).
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.modules.generators.latent import (
    LATENT_SPACES,
    check_wplus_state,
    from_gaussian_fit,
    gaussian_fit_of,
    mapped_mean,
)
from ilo_pl.modules.generators.nvlabs.ops import MODCONV_IMPLS, bias_act, normalize_2nd_moment
from ilo_pl.modules.generators.nvlabs.pickle_reader import PersistentRecord
from ilo_pl.policy import check_impl

__all__ = ["LATENT_SPACES", "NOISE_MODES", "FullyConnectedLayer", "MappingNetwork", "NVLabsGenerator", "mapping_spec"]

#: ``noise_mode`` values (NVIDIA's ``'random'``, ``'const'``, ``'none'``).
NOISE_MODES = ("random", "const", "none")
PathLike = Union[str, Path]

#: The group of each state entry that is not a noise map.
_ENTRY_GROUPS = {"h": "state", "residual": "state", "skip": "skip", "latent": "latent", "class_label": "condition"}


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: ``act(x @ (W * weight_gain).T + b * bias_gain)``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
        lr_multiplier: float = 1.0, bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = float(lr_multiplier)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    """z (and class c) -> w, broadcast to ``num_ws`` rows, with ``w_avg`` truncation."""

    def __init__(
        self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
        embed_features: Optional[int] = None, layer_features: Optional[int] = None,
        lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if embed_features is None else embed_features
        embed_features = 0 if c_dim == 0 else embed_features
        layer_features = w_dim if layer_features is None else layer_features
        feats = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        self.embed = FullyConnectedLayer(c_dim, embed_features) if c_dim > 0 else None
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation="lrelu", lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self, z: Optional[Tensor], c: Optional[Tensor] = None, truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None, update_emas: bool = False,
    ) -> Tensor:
        """``mapping(z, c)`` ``[B, num_ws, w_dim]`` (NVIDIA's call signature)."""
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.shape[-1] != self.c_dim:
                raise ValueError(f"this generator is conditional: pass c [B, {self.c_dim}] (one-hot class labels)")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


def mapping_spec(mapping: PersistentRecord, w_avg_beta: float) -> Dict[str, Any]:
    """:class:`MappingNetwork`'s arguments from a recorded mapping network (attributes and weight shapes).

    Args:
        mapping: the record of ``G_ema.mapping``.
        w_avg_beta: the default where the record has none (StyleGAN2-ADA 0.995, StyleGAN3 0.998).
    """
    fc0 = mapping.child("fc0")
    embed = mapping.child("embed")
    n_layers = int(mapping.attr("num_layers"))
    return dict(
        num_layers=n_layers,
        embed_features=None if embed is None else int(embed.state["_parameters"]["weight"].shape[0]),
        layer_features=int(fc0.state["_parameters"]["weight"].shape[0]) if n_layers > 1 else None,
        lr_multiplier=float(fc0.attr("bias_gain")),
        w_avg_beta=float(mapping.attr("w_avg_beta") or w_avg_beta),
    )


def _version_of(t: Tensor) -> Optional[int]:
    """``t``'s in-place version counter (``None`` for inference-mode tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class NVLabsGenerator(SplitGenerator):
    """Base of NVIDIA's StyleGAN generators: options, class labels, mapping statistics, W+ latent, NVIDIA's call.

    A subclass calls :meth:`_configure` in its constructor (before building
    its synthesis network, so that the state dict keeps NVIDIA's order:
    ``mapping`` first), and implements :meth:`state_names` (ending with
    :meth:`_condition_names`), ``advance``, ``render``, ``synthesize`` and,
    where the network has noise inputs, :meth:`_initial_noises`.
    """

    #: Whether ``init_variables`` draws the per-row ``z`` in both latent spaces (StyleGAN2-ADA
    #: did from the start; kept so that its seeded draws stay the same) or only in W+.
    _draws_z_always = False

    # ------------------------------------------------------------------ construction
    def _configure(
        self, spec: Mapping[str, Any], *, latent_space: str, init_truncation: float, noise_mode: str,
        class_label: Optional[int], mean_latent_samples: int, gaussian_fit_samples: int, stats_seed: int,
        modconv_impl: str, w_avg_recorded: bool,
    ) -> None:
        """Check the shared options, set the architecture's sizes and build the mapping network.

        Raises:
            ValueError: on an unknown ``latent_space``, ``noise_mode`` or
                ``modconv_impl``, too few statistics samples, or a bad ``class_label``.
        """
        name = type(self).__name__
        if latent_space not in LATENT_SPACES:
            raise ValueError(f"latent_space must be one of {LATENT_SPACES}; got {latent_space!r}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        check_impl(f"{name}(modconv_impl=...)", modconv_impl, MODCONV_IMPLS)
        if mean_latent_samples < 1 or gaussian_fit_samples < 2:
            raise ValueError("mean_latent_samples must be >= 1 and gaussian_fit_samples >= 2")
        self.spec = spec
        self.z_dim, self.c_dim, self.w_dim = spec["z_dim"], spec["c_dim"], spec["w_dim"]
        self.img_resolution, self.img_channels, self.num_ws = spec["img_resolution"], spec["img_channels"], spec["num_ws"]
        self.image_shape = (self.img_channels, self.img_resolution, self.img_resolution)
        self.latent_space, self.noise_mode = latent_space, noise_mode
        self.init_truncation = float(init_truncation)
        self.mean_latent_samples, self.gaussian_fit_samples = int(mean_latent_samples), int(gaussian_fit_samples)
        self.stats_seed = int(stats_seed)
        self.class_label = self._default_label(class_label)

        m = spec["mapping"]
        self.mapping = MappingNetwork(
            self.z_dim, self.c_dim, self.w_dim, self.num_ws, num_layers=m["num_layers"],
            embed_features=m["embed_features"], layer_features=m["layer_features"],
            lr_multiplier=m["lr_multiplier"], w_avg_beta=m["w_avg_beta"],
        )
        # One Gaussian fit per class (row 0 for unconditional networks), computed when first needed;
        # NaN until then, so that a row used before its fit could never pass unnoticed.
        rows = max(self.c_dim, 1)
        self.register_buffer("gaussian_fit_mean", torch.full((rows, self.w_dim), math.nan), persistent=False)
        self.register_buffer("gaussian_fit_std", torch.full((rows, self.w_dim), math.nan), persistent=False)
        self._stats_ready: Dict[str, Any] = {"w_avg": w_avg_recorded, "gaussian_fit": set()}

    def _default_label(self, class_label: Any) -> Optional[int]:
        """The constructor's ``class_label``, checked: one class for every problem, or ``None``."""
        if class_label is None:
            return None
        if self.c_dim == 0:
            raise ValueError("class_label given, but this generator is unconditional (c_dim 0)")
        if isinstance(class_label, (list, tuple)):
            raise ValueError(
                f"class_label is one class for every problem (an int); got {class_label!r}. Give problems "
                "their own classes with the data's class labels (data.class_labels: a CSV of file,label rows)"
            )
        return self._checked_label(class_label, "class_label")

    def _checked_label(self, label: Any, what: str) -> int:
        if isinstance(label, bool):
            raise ValueError(f"{what} must be a whole number; got {label!r}")
        try:
            value = operator.index(label)
        except TypeError:
            raise ValueError(f"{what} must be a whole number; got {label!r}") from None
        if not 0 <= value < self.c_dim:
            raise ValueError(
                f"{what} {value} is out of range: {type(self).__name__} has {self.c_dim} classes (0..{self.c_dim - 1})"
            )
        return value

    @classmethod
    def from_checkpoint(cls, path: PathLike, **kwargs: Any) -> "NVLabsGenerator":
        """Build the generator of a network pickle (path only; architecture read from the file)."""
        return cls(checkpoint=path, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # noqa: ANN201
        """``nn.Module.load_state_dict`` that also forgets the cached Gaussian fits."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._stats_ready = {"w_avg": True, "gaussian_fit": set()}
        self.__dict__.pop("_fit_labels", None)  # the fits of the labels seen so far are gone too
        return result

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.mapping.w_avg.device

    # ------------------------------------------------------------------ class labels
    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """``c_dim``: the number of classes (0: unconditional)."""
        return int(self.c_dim)

    def check_labels(self, labels: Optional[Sequence[int]], batch_size: Optional[int] = None) -> Optional[List[int]]:
        """The class of each problem: ``labels`` checked, or the default ``class_label`` for every problem.

        Args:
            labels: one class per problem, or ``None`` (the constructor's ``class_label``).
            batch_size: the number of problems (checked against ``labels``; 1 if ``None``).

        Returns:
            One class per problem; ``None`` for an unconditional network.

        Raises:
            ValueError: for labels given to an unconditional network, a conditional
                one without labels or default (saying how to give them), a label that
                is not a whole number or out of range, or a count that differs from ``batch_size``.
        """
        if self.c_dim == 0:
            return super().check_labels(labels, batch_size)
        name = type(self).__name__
        if labels is None:
            if self.class_label is None:
                raise ValueError(
                    f"{name} is class-conditional ({self.c_dim} classes, 0..{self.c_dim - 1}): give each problem "
                    "a class label: data.class_labels (--data.class_labels labels.csv: a CSV of file,label rows; "
                    "or one int for every problem), or a default for every problem "
                    "(model.generator.init_args.class_label)"
                )
            return [self.class_label] * (1 if batch_size is None else int(batch_size))
        out = [self._checked_label(label, "class label") for label in labels]
        if batch_size is not None and len(out) != batch_size:
            raise ValueError(f"{len(out)} class labels for {batch_size} problems; give one per problem")
        return out

    def _condition_names(self) -> List[str]:
        """The state's condition entries: ``["class_label"]`` for a conditional network, else none."""
        return ["class_label"] if self.c_dim > 0 else []

    def _label_state(self, labels: Optional[List[int]]) -> State:
        """The ``class_label`` entry ``[B]`` (float, as every state entry) of checked labels."""
        if labels is None:
            return {}
        return {"class_label": torch.tensor(labels, dtype=torch.float32, device=self.device)}

    # ------------------------------------------------------------------ mapping statistics
    def _onehot(self, labels: Tensor) -> Tensor:
        return F.one_hot(labels, self.c_dim).to(self.device, torch.float32)

    def _mapped_samples(self, n: int, label: Optional[int] = None, chunk: int = 8192) -> Iterator[Tensor]:
        """``mapping(z, c)`` rows for ``n`` seeded ``z``: class ``label``, or (``None``) every class in turn."""
        gen = torch.Generator().manual_seed(self.stats_seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = torch.randn(m, self.z_dim, generator=gen).to(self.device)
            c = None
            if self.c_dim > 0:
                # w_avg of random weights: classes in turn, as training draws them.
                idx = torch.full((m,), label) if label is not None else torch.arange(start, start + m) % self.c_dim
                c = self._onehot(idx)
            yield self.mapping(z, c)[:, 0]

    @torch.no_grad()
    def average_latent(self) -> Tensor:
        """``w_avg`` ``[1, w_dim]``: the snapshot's tracked average (random weights: a seeded mean)."""
        if not self._stats_ready["w_avg"]:
            n = self.mean_latent_samples
            self.mapping.w_avg.copy_(mapped_mean(self._mapped_samples(n), n, self.w_dim, self.device))
            self._stats_ready["w_avg"] = True
        return self.mapping.w_avg[None]

    @torch.no_grad()
    def gaussian_fit(self, label: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """PULSE's Gaussian fit ``(mu, sigma)`` of ``leaky_relu(mapping(z, c), 5)``, each ``[w_dim]``.

        Args:
            label: the class of a conditional network (``None``: the default
                ``class_label``); unconditional networks have one fit.
        """
        row = 0
        if self.c_dim > 0:
            row = self.check_labels(None if label is None else [label])[0]
        if row not in self._stats_ready["gaussian_fit"]:
            n = self.gaussian_fit_samples
            samples = self._mapped_samples(n, row if self.c_dim > 0 else None)
            mean, std = gaussian_fit_of(samples, n, self.w_dim, self.device)
            self.gaussian_fit_mean[row].copy_(mean)
            self.gaussian_fit_std[row].copy_(std)
            self._stats_ready["gaussian_fit"].add(row)
        return self.gaussian_fit_mean[row], self.gaussian_fit_std[row]

    def latent_to_w(self, latent: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """W+ rows from the ``latent`` state entry (``labels``: the ``class_label`` entry of a conditional network)."""
        if self.latent_space == "w+":
            return latent
        if self.c_dim == 0:
            return from_gaussian_fit(latent, *self.gaussian_fit())
        if labels is None:
            raise ValueError("a conditional network's Gaussian fit needs the state's class_label entry")
        self._ensure_fits(labels)
        idx = labels.round().long()
        # Each problem's rows through its own class's fit (a row of the fit table per problem).
        return from_gaussian_fit(latent, self.gaussian_fit_mean[idx][:, None], self.gaussian_fit_std[idx][:, None])

    def _ensure_fits(self, labels: Tensor) -> None:
        """Compute the Gaussian fits of the classes in ``labels`` that have none yet."""
        # Reading labels on the host syncs an accelerator: read each labels tensor once (a stage's
        # fixed entry is the same tensor at every step), not at every render.
        version = _version_of(labels)
        seen = self.__dict__.get("_fit_labels")
        if seen is not None and version is not None and seen[0] is labels and seen[1] == version:
            return
        for label in sorted({int(v) for v in labels.round().long().tolist()}):
            self.gaussian_fit(self._checked_label(label, "the state's class_label"))
        self.__dict__["_fit_labels"] = (labels, version)

    # ------------------------------------------------------------------ the state
    @torch.no_grad()
    def _initial_latent(
        self, batch_size: int, generator: Optional[torch.Generator], labels: Optional[List[int]]
    ) -> Tensor:
        """Initial W+ rows ``w_avg + t (mapping(z, c) - w_avg)`` (own ``z`` per row); ``gaussian_fit``: N(0, 1) rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        dev = self.device
        z = None
        if self.latent_space == "w+" or self._draws_z_always:
            z = torch.randn(batch_size, self.num_ws, self.z_dim, generator=generator)
        if self.latent_space == "w+":
            avg = self.average_latent()
            c = None if labels is None else self._onehot(torch.tensor(labels)).repeat_interleave(self.num_ws, 0)
            w = self.mapping(z.reshape(-1, self.z_dim).to(dev), c)[:, 0].reshape(batch_size, self.num_ws, self.w_dim)
            return avg + self.init_truncation * (w - avg)
        for label in sorted(set(labels or [])):
            self.gaussian_fit(label)  # now, outside any training step (not under its autocast)
        return torch.randn(batch_size, self.num_ws, self.w_dim, generator=generator).to(dev)

    @torch.no_grad()
    def init_variables(
        self, batch_size: int, generator: Optional[torch.Generator] = None, labels: Optional[Sequence[int]] = None
    ) -> State:
        """Initial W+ rows (own ``z`` per row; ``gaussian_fit``: standard Gaussian rows), noises, classes.

        Args:
            batch_size: the number of problems.
            generator: the CPU generator the draws come from.
            labels: conditional networks: one class per problem (default: ``class_label`` for all).
        """
        labels = self.check_labels(labels, batch_size)
        state: State = {"latent": self._initial_latent(batch_size, generator, labels)}
        state.update(self._initial_noises(batch_size, generator))
        state.update(self._label_state(labels))
        return state

    def _initial_noises(self, batch_size: int, generator: Optional[torch.Generator]) -> State:
        """The initial noise maps (none here: StyleGAN3 has no noise inputs)."""
        return {}

    def _check_state(self, state: Mapping[str, Tensor], split: int) -> None:
        check_wplus_state(state, split, self.state_names(split), self.num_ws - split, self.w_dim)
        if self.c_dim > 0:
            labels, b = state["class_label"], state["latent"].shape[0]
            if tuple(labels.shape) != (b,):
                raise ValueError(
                    f"state['class_label'] must be [B] = [{b}] (one class per problem); got {tuple(labels.shape)}"
                )

    def _w(self, state: Mapping[str, Tensor]) -> Tensor:
        """The W+ rows of a state's ``latent`` entry."""
        return self.latent_to_w(state["latent"], state.get("class_label"))

    def groups(self, split: int) -> Dict[str, str]:
        """``h``, ``residual`` -> ``state``; ``skip``; ``latent``; ``noise_i`` -> ``noise``; ``class_label`` -> ``condition``."""
        return {n: _ENTRY_GROUPS.get(n, "noise") for n in self.state_names(split)}

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        """The noises (norm over ``(1, 2, 3)``) and, in ``"gaussian_fit"`` mode, each latent row (``(2,)``)."""
        out: Dict[str, Tuple[int, ...]] = {n: (1, 2, 3) for n in self.state_names(split) if n.startswith("noise_")}
        if self.latent_space == "gaussian_fit":
            out["latent"] = (2,)
        return out

    def render_settings(self) -> Dict[str, object]:
        """``latent_space`` and the Gaussian fit's inputs (a state's class is in the state itself)."""
        out: Dict[str, object] = {"latent_space": self.latent_space}
        if self.latent_space == "gaussian_fit":
            out.update(gaussian_fit_samples=self.gaussian_fit_samples, stats_seed=self.stats_seed)
        return out

    def start_settings(self) -> Dict[str, object]:
        """The default class of every problem (``class_label``), when set: it is the start's class."""
        return {} if self.class_label is None else {"class_label": self.class_label}

    # ------------------------------------------------------------------ NVIDIA's API
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``G(state)`` (split protocol) or NVIDIA's ``G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const')``."""
        if args and isinstance(args[0], Mapping):
            return self.render(args[0], 0)
        return self.generate(*args, **kwargs)

    def generate(
        self, z: Tensor, c: Optional[Tensor] = None, truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None, noise_mode: str = "const", force_fp32: bool = True, **_: Any,
    ) -> Tensor:
        """NVIDIA's ``G(z, c, ...)``: mapping then synthesis."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesize(ws, noise_mode=noise_mode, force_fp32=force_fp32)

    def synthesize(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True) -> Tensor:  # pragma: no cover
        """``G.synthesis(ws, noise_mode=...)`` (each network's own)."""
        raise NotImplementedError
