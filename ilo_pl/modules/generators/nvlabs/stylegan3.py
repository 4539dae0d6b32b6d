"""NVIDIA's StyleGAN3 (configs T and R), read safely from a network pickle and split at every layer.

Written from the architecture (Karras et al. 2021, "Alias-Free Generative
Adversarial Networks") and the facts recorded in NVIDIA's snapshots; the
module names and state-dict keys are NVIDIA's (``synthesis.input.transform``,
``synthesis.L3_52_27.up_filter``, ...), so a snapshot's ``G_ema`` loads with
``strict=True``. Every per-layer constant (sizes, sampling rates, up/down
factors, paddings, clamps, filter taps, gains) is read from the recorded
attributes and buffers, never recomputed, and nothing from the file is run.

The network
-----------
* mapping: StyleGAN-2's (:class:`~ilo_pl.modules.generators.nvlabs.mapping.MappingNetwork`,
  the same layers, keys and truncation), ``num_ws = num_layers + 2`` rows;
* ``input`` (W+ row 0): Fourier features ``sin(2 pi (<f_c, p> + phi_c))`` on a
  grid of pixel centres ``p`` (in units of ``1 / sampling_rate``), the
  frequencies rotated and the phases shifted by the recorded ``transform``
  composed with a per-sample rotation/translation from an affine of ``w``,
  each feature faded out near the band limit, then mixed by a 1x1 weight;
* ``L0 .. L{n}`` (W+ rows ``1 .. num_ws - 1``): modulated convolution
  (weights and styles pre-normalised, demodulated, inputs scaled by
  ``magnitude_ema ** -0.5``), then the filtered leaky ReLU: bias, upsampling
  by ``up_factor`` with ``up_filter`` (zero insertion, padding, FIR, gain
  ``up**2``), leaky ReLU with gain ``sqrt(2)`` and the ``conv_clamp``, FIR with
  ``down_filter`` and downsampling by ``down_factor``. The last layer is the
  ToRGB (1x1, no demodulation, styles scaled by ``1/sqrt(fan_in)``, linear,
  no resampling); the image is its output times ``output_scale``.
  Critically sampled layers and the R config's radial (2-D) down filters
  need nothing special here: they differ only in the recorded filters.

Splits
------
The synthesis network is a chain of ``num_ws`` stages ``input, L0, ..., L{n}``;
stage ``j`` reads W+ row ``j``. Split ``k`` (``0 <= k <= num_ws - 1``) sits
after stage ``k - 1``: the state is ``h`` (the activation after stage ``k - 1``,
``k >= 1``, group ``state``) and ``latent`` (W+ rows ``k ..``, group
``latent``), and for conditional networks each problem's class (``class_label``,
group ``condition``; see :mod:`~ilo_pl.modules.generators.nvlabs.mapping`).
StyleGAN3 has no noise inputs, so there is no ``noise`` group.
``render(advance(v, 0, k), k) == render(v, 0)`` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.checkpoints import load_state_dict_strict
from ilo_pl.modules.generators.base import State
from ilo_pl.modules.generators.nvlabs.mapping import NOISE_MODES, FullyConnectedLayer, NVLabsGenerator, mapping_spec
from ilo_pl.modules.generators.nvlabs.ops import as_float, upfirdn2d
from ilo_pl.modules.generators.stylegan2.layers import ModconvImplOption, resolve_modconv_impl
from ilo_pl.policy import work_dtype
from ilo_pl.modules.generators.nvlabs.pickle_reader import (
    NetworkPickleError,
    PersistentRecord,
    read_network_pickle,
    record_state_dict,
    take_generator,
    walk,
)

__all__ = ["StyleGAN3Generator", "filtered_lrelu", "is_stylegan3_record", "modulated_conv2d_sg3"]

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- operations
def filtered_lrelu(
    x: Tensor,
    fu: Optional[Tensor] = None,
    fd: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = math.sqrt(2.0),
    slope: float = 0.2,
    clamp: Optional[float] = None,
) -> Tensor:
    """StyleGAN3's filtered leaky ReLU (reference PyTorch path, NVIDIA's conventions).

    ``bias -> upsample (zero insertion, pad [x0, x1, y0, y1], FIR fu, gain up**2)
    -> leaky ReLU (slope) * gain, clamp -> FIR fd, keep every down-th sample``.
    Filters are convolved (flipped), 1-D filters apply separably along x then
    y, 2-D filters (the R config's radial down filters) as they are, and
    ``None`` is the identity.

    Args:
        x: ``[B, C, H, W]``.
        fu: upsampling filter ``[taps]`` or ``[taps, taps]`` (``None``: identity).
        fd: downsampling filter (``None``: identity).
        b: bias ``[C]``.
        up: upsampling factor.
        down: downsampling factor.
        padding: ``[x0, x1, y0, y1]``, applied after zero insertion.
        gain: gain after the activation.
        slope: leaky ReLU slope (1: linear).
        clamp: clamp after the gain (``None``: none).
    """
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    if fu is not None or up != 1 or any(int(p) != 0 for p in padding):
        f = fu if fu is not None else torch.ones(1, 1, dtype=x.dtype, device=x.device)
        x = upfirdn2d(x, f, up=up, padding=padding, gain=float(up * up))
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    if fd is not None or down != 1:
        f = fd if fd is not None else torch.ones(1, 1, dtype=x.dtype, device=x.device)
        x = upfirdn2d(x, f, down=down)
    return x


def modulated_conv2d_sg3(
    x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, padding: int = 0,
    input_gain: Optional[Tensor] = None, impl: str = "auto",
) -> Tensor:
    """StyleGAN3's modulated convolution ``conv(x * g, W' * s_b) * d_b`` per sample ``b``.

    With demodulation, the weight is first scaled to unit mean square per
    output channel (``W'``) and each sample's styles to unit mean square (this
    scale cancels in the demodulation up to its 1e-8; it is taken per sample so
    that problems of a batch never mix), then each output channel is
    demodulated (``d_b``). ``input_gain`` (``g = magnitude_ema ** -0.5``)
    scales the input channels after the demodulation (it does not enter ``d_b``).

    Two forms, equal up to float rounding (``impl``, the rule of
    :func:`~ilo_pl.modules.generators.stylegan2.layers.resolve_modconv_impl`):
    ``"fused"`` (NVIDIA's only form) builds each sample's weight and runs one
    grouped convolution; ``"unfused"`` scales the input by ``s_b * g``,
    convolves with the shared ``W'`` and scales the output by ``d_b``, one
    ordinary convolution for the whole batch; ``"auto"`` picks per call.

    Args:
        x: ``[B, in, H, W]``.
        weight: ``[out, in, kh, kw]``.
        styles: ``[B, in]``.
        demodulate: normalise each output channel.
        padding: convolution padding (``kernel - 1`` in StyleGAN3: the map grows).
        input_gain: scalar or ``[in]`` gain of the inputs.
        impl: ``"auto"``, ``"fused"`` or ``"unfused"``.
    """
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    style_grad = styles.requires_grad and torch.is_grad_enabled()
    form = resolve_modconv_impl(impl, b, x.device, style_grad=style_grad)
    work = work_dtype(x.dtype)  # float32 (NVIDIA's choice for these statistics); float64 stays float64
    styles = styles.to(work)
    weight = weight.to(work)
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    gain = None if input_gain is None else input_gain.to(work).expand(in_ch)
    if form == "unfused":
        scale = styles if gain is None else styles * gain  # [B, in]
        y = F.conv2d(x * scale.to(x.dtype).reshape(b, in_ch, 1, 1), weight.to(x.dtype), padding=padding)
        if demodulate:
            # sum over (in, kh, kw) of (W' s_b)^2 = s_b^2 @ (sum over kh, kw of W'^2)^T
            d = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [B, out]
            y = y * d.to(y.dtype).reshape(b, out_ch, 1, 1)
        return y
    w = weight.unsqueeze(0) * styles.reshape(b, 1, in_ch, 1, 1)  # [B, out, in, kh, kw]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if gain is not None:
        w = w * gain.reshape(1, 1, in_ch, 1, 1)
    y = F.conv2d(x.reshape(1, b * in_ch, *x.shape[2:]), w.reshape(b * out_ch, in_ch, kh, kw).to(x.dtype),
                 padding=padding, groups=b)
    return y.reshape(b, out_ch, *y.shape[2:])


# ----------------------------------------------------------------------------- layers
class SynthesisInput(nn.Module):
    """Fourier-feature input: ``channels`` features on a ``size`` grid, transformed per sample by ``w``."""

    def __init__(self, w_dim: int, channels: int, size: Sequence[int], sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = [int(s) for s in size]  # [width, height]
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        self.weight = nn.Parameter(torch.zeros(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", torch.zeros(channels, 2))
        self.register_buffer("phases", torch.zeros(channels))

    def forward(self, w: Tensor) -> Tensor:
        """Features ``[B, channels, height, width]`` from W+ row 0 ``[B, w_dim]``."""
        b = w.shape[0]
        t = self.affine(w.float()).float()  # [B, 4]: rotation (cos, sin) and translation (x, y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        zero, one = torch.zeros_like(t[:, 0]), torch.ones_like(t[:, 0])
        rot = torch.stack([
            torch.stack([t[:, 0], -t[:, 1], zero], 1),
            torch.stack([t[:, 1], t[:, 0], zero], 1),
            torch.stack([zero, zero, one], 1),
        ], 1)
        shift = torch.stack([
            torch.stack([one, zero, -t[:, 2]], 1),
            torch.stack([zero, one, -t[:, 3]], 1),
            torch.stack([zero, zero, one], 1),
        ], 1)
        m = rot @ shift @ self.transform.float().unsqueeze(0)  # [B, 3, 3]
        freqs0 = self.freqs.float().unsqueeze(0)  # [1, C, 2]
        phases = self.phases.float().unsqueeze(0) + (freqs0 @ m[:, :2, 2:]).squeeze(2)  # [B, C]
        freqs = freqs0 @ m[:, :2, :2]  # [B, C, 2]
        amp = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        width, height = self.size
        # Pixel centres in units of 1/sampling_rate, centred on the grid.
        def centres(n: int) -> Tensor:
            return ((torch.arange(n, device=w.device, dtype=torch.float32) + 0.5) * 2 / n - 1) * (0.5 * n / self.sampling_rate)

        gx, gy = centres(width), centres(height)
        arg = (gx.reshape(1, 1, width, 1) * freqs[:, :, 0].reshape(b, 1, 1, -1)
               + gy.reshape(1, height, 1, 1) * freqs[:, :, 1].reshape(b, 1, 1, -1)
               + phases.reshape(b, 1, 1, -1))  # [B, H, W, C]
        x = torch.sin(arg * (2 * math.pi)) * amp.reshape(b, 1, 1, -1)
        x = x @ (self.weight.float() / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """One StyleGAN3 layer: modulated convolution, then the filtered leaky ReLU (or the ToRGB)."""

    def __init__(
        self, w_dim: int, in_channels: int, out_channels: int, conv_kernel: int, is_torgb: bool,
        up_factor: int, down_factor: int, padding: Sequence[int], conv_clamp: Optional[float],
        up_taps: Optional[Sequence[int]], down_taps: Optional[Sequence[int]],
        is_critically_sampled: bool = False, use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.w_dim, self.in_channels, self.out_channels = w_dim, in_channels, out_channels
        self.conv_kernel, self.is_torgb = int(conv_kernel), bool(is_torgb)
        self.up_factor, self.down_factor = int(up_factor), int(down_factor)
        self.padding = [int(p) for p in padding]
        self.conv_clamp = conv_clamp
        self.is_critically_sampled, self.use_fp16 = bool(is_critically_sampled), bool(use_fp16)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.impl = "auto"  # set by the generator's ``modconv_impl``
        self.register_buffer("up_filter", None if up_taps is None else torch.zeros(list(up_taps)))
        self.register_buffer("down_filter", None if down_taps is None else torch.zeros(list(down_taps)))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """``[B, out, H', W']`` from ``x`` ``[B, in, H, W]`` and the layer's W+ row ``[B, w_dim]``."""
        styles = self.affine(w.float()).float()
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d_sg3(x, self.weight, styles, demodulate=not self.is_torgb,
                                 padding=self.conv_kernel - 1, input_gain=self.magnitude_ema.rsqrt(), impl=self.impl)
        return filtered_lrelu(
            x, self.up_filter, self.down_filter, self.bias, up=self.up_factor, down=self.down_factor,
            padding=self.padding, gain=1.0 if self.is_torgb else math.sqrt(2.0),
            slope=1.0 if self.is_torgb else 0.2, clamp=self.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    """``input`` then the layers ``L0_...``; ``synthesis(ws, noise_mode=...)`` is NVIDIA's call."""

    def __init__(self, spec: Mapping[str, Any], owner: "StyleGAN3Generator") -> None:
        super().__init__()
        self.w_dim, self.num_ws = spec["w_dim"], spec["num_ws"]
        self.img_resolution, self.img_channels = spec["img_resolution"], spec["img_channels"]
        self.output_scale = float(spec["output_scale"])
        self.layer_names = [layer["name"] for layer in spec["layers"]]
        self.input = SynthesisInput(spec["w_dim"], **spec["input"])
        for layer in spec["layers"]:
            kw = {k: v for k, v in layer.items() if k != "name"}
            setattr(self, layer["name"], SynthesisLayer(spec["w_dim"], **kw))
        self.__dict__["_owner"] = owner

    def forward(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True, **_: Any) -> Tensor:
        """``G.synthesis(ws)``: ``[B, C, H, W]`` from ``ws`` ``[B, num_ws, w_dim]`` (``noise_mode`` is ignored)."""
        return self.__dict__["_owner"].synthesize(ws, noise_mode=noise_mode, force_fp32=force_fp32)


# ----------------------------------------------------------------------------- architecture from the record
def is_stylegan3_record(record: PersistentRecord) -> bool:
    """Whether a recorded ``Generator`` is StyleGAN3's (its synthesis network has ``layer_names``)."""
    synthesis = record.child("synthesis")
    return synthesis is not None and synthesis.attr("layer_names") is not None


def _ints(value: Any) -> List[int]:
    if isinstance(value, (int, np.integer)):
        return [int(value), int(value)]
    return [int(v) for v in np.asarray(value).reshape(-1).tolist()]


def _spec_from_record(rec: PersistentRecord, source: str) -> Dict[str, Any]:
    """The architecture of a recorded StyleGAN3 ``Generator``, from its attributes and buffer shapes."""
    mapping, synthesis = rec.child("mapping"), rec.child("synthesis")
    if mapping is None or synthesis is None:
        raise NetworkPickleError(f"{source}: the generator has no mapping/synthesis network")
    if not is_stylegan3_record(rec):
        raise NetworkPickleError(
            f"{source}: the synthesis network ({synthesis.class_name}) is not StyleGAN3's (no layer_names; "
            "a StyleGAN-2 pickle? use StyleGAN2ADAGenerator or load_generator)"
        )
    m = mapping_spec(mapping, w_avg_beta=0.998)
    inp = synthesis.child("input")
    if inp is None:
        raise NetworkPickleError(f"{source}: the StyleGAN3 synthesis network has no input layer")
    spec_in = dict(
        channels=int(inp.attr("channels")), size=_ints(inp.attr("size")),
        sampling_rate=float(inp.attr("sampling_rate")), bandwidth=float(inp.attr("bandwidth")),
    )
    layers = []
    for name in synthesis.attr("layer_names"):
        lr = synthesis.child(name)
        if lr is None:
            raise NetworkPickleError(f"{source}: synthesis layer {name} is missing")
        bufs = lr.state.get("_buffers") or {}
        filt = {k: (None if bufs.get(k) is None else tuple(bufs[k].shape)) for k in ("up_filter", "down_filter")}
        for k, shape in filt.items():
            if shape is not None and len(shape) not in (1, 2):
                raise NetworkPickleError(f"{source}: layer {name} has a {shape} {k}; expected a 1-D or 2-D filter")
        layers.append(dict(
            name=str(name), in_channels=int(lr.attr("in_channels")), out_channels=int(lr.attr("out_channels")),
            conv_kernel=int(lr.attr("conv_kernel")), is_torgb=bool(lr.attr("is_torgb")),
            up_factor=int(lr.attr("up_factor")), down_factor=int(lr.attr("down_factor")),
            padding=_ints(lr.attr("padding")), conv_clamp=as_float(lr.attr("conv_clamp")),
            up_taps=filt["up_filter"], down_taps=filt["down_filter"],
            is_critically_sampled=bool(lr.attr("is_critically_sampled")), use_fp16=bool(lr.attr("use_fp16")),
        ))
        if len(layers[-1]["padding"]) != 4:
            raise NetworkPickleError(f"{source}: layer {name} has padding {layers[-1]['padding']}; expected 4 numbers")
    if not layers or not layers[-1]["is_torgb"]:
        raise NetworkPickleError(f"{source}: the last StyleGAN3 layer is not a ToRGB layer")
    num_ws = int(rec.attr("num_ws"))
    if num_ws != len(layers) + 1:
        raise NetworkPickleError(f"{source}: {len(layers)} layers and the input need {len(layers) + 1} W+ rows; "
                                 f"the network records num_ws {num_ws}")
    return dict(
        z_dim=int(rec.attr("z_dim")), c_dim=int(rec.attr("c_dim")), w_dim=int(rec.attr("w_dim")),
        img_resolution=int(rec.attr("img_resolution")), img_channels=int(rec.attr("img_channels")),
        num_ws=num_ws, mapping=m, input=spec_in, layers=layers,
        output_scale=float(synthesis.attr("output_scale", 1.0)),
    )


# ----------------------------------------------------------------------------- the generator
class StyleGAN3Generator(ModconvImplOption, NVLabsGenerator):
    """NVIDIA's StyleGAN3 (T or R), read safely from a network pickle, split after every layer.

    Options, class labels, mapping statistics and NVIDIA's ``G(z, c, ...)`` are
    :class:`~ilo_pl.modules.generators.nvlabs.mapping.NVLabsGenerator`'s.
    ``modconv_impl`` reaches every :class:`SynthesisLayer`.

    Args:
        checkpoint: an NVIDIA StyleGAN3 network pickle (``.pkl``; read with
            :func:`~ilo_pl.modules.generators.nvlabs.pickle_reader.read_network_pickle`,
            nothing from the file is run); its ``network`` entry (``G_ema``) is
            loaded strictly. Random weights are not supported (StyleGAN3's
            filters are designed at construction; a snapshot carries them).
        network: which network of a snapshot to take (``"G_ema"``; ``"G"`` only for tests).
        latent_space: ``"w+"`` or ``"gaussian_fit"`` (PULSE's proxy, as the
            other StyleGAN generators').
        init_truncation: initial W+ rows ``w_avg + t * (mapping(z, c) - w_avg)``.
        noise_mode: accepted for a uniform interface with the StyleGAN-2
            generators; StyleGAN3 has no noise inputs, so it changes nothing.
        class_label: conditional snapshots only: the default class of every
            problem (an int), for problems whose data give none; each
            problem's class is kept in its state (entry ``class_label``).
        gaussian_fit_samples, stats_seed: the Gaussian fit's draws.
        mean_latent_samples: unused with a snapshot (``w_avg`` is recorded);
            kept for the uniform interface.
        modconv_impl: ``"auto"`` (default), ``"fused"`` or ``"unfused"``: how
            the modulated convolutions run (:func:`modulated_conv2d_sg3`; the
            rule of the rosinality generator's ``modconv_impl``); settable.

    Raises:
        FileNotFoundError, NetworkPickleError, ValueError.
    """

    _modconv_layers = (SynthesisLayer,)

    def __init__(
        self,
        checkpoint: Optional[PathLike] = None,
        network: str = "G_ema",
        latent_space: str = "w+",
        init_truncation: float = 0.7,
        noise_mode: str = "none",
        class_label: Optional[int] = None,
        mean_latent_samples: int = 4096,
        gaussian_fit_samples: int = 100_000,
        stats_seed: int = 0,
        modconv_impl: str = "auto",
        _snapshot: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if checkpoint is None:
            raise ValueError("StyleGAN3Generator needs a `checkpoint` (an NVIDIA StyleGAN3 .pkl); "
                             "random weights are not supported")
        source = str(checkpoint)
        snapshot = _snapshot if _snapshot is not None else read_network_pickle(checkpoint)
        record = take_generator(snapshot, network, checkpoint)
        spec = _spec_from_record(record, source)
        self._configure(
            spec, latent_space=latent_space, init_truncation=init_truncation, noise_mode=noise_mode,
            class_label=class_label, mean_latent_samples=mean_latent_samples,
            gaussian_fit_samples=gaussian_fit_samples, stats_seed=stats_seed, modconv_impl=modconv_impl,
            w_avg_recorded=True,
        )
        self.synthesis = SynthesisNetwork(spec, self)
        self.num_stages = self.num_ws  # input + layers
        self.num_splits = self.num_stages - 1
        load_state_dict_strict(self, record_state_dict(record),
                               f"{checkpoint} ({network}) does not match the StyleGAN3 architecture read from its "
                               "recorded attributes")
        self._apply_recorded_gains(record)
        self.modconv_impl = modconv_impl
        self.freeze()

    # ------------------------------------------------------------------ construction helpers
    def _apply_recorded_gains(self, record: PersistentRecord) -> None:
        """Take the recorded gains and activations of the fully connected layers over the defaults."""
        mods = dict(self.named_modules())
        for name, rec in walk(record):
            mod = mods.get(name)
            if not isinstance(mod, FullyConnectedLayer):
                continue
            for attr in ("weight_gain", "bias_gain"):
                if attr in rec.state:
                    setattr(mod, attr, as_float(rec.attr(attr)))
            act = rec.attr("activation")
            if act is not None:
                if act not in ("linear", "lrelu"):
                    raise NetworkPickleError(f"layer {name}: unsupported activation {act!r}")
                mod.activation = act

    def _stage(self, j: int) -> nn.Module:
        """Stage ``j``: ``input`` (0) or layer ``j - 1``."""
        if j == 0:
            return self.synthesis.input
        return getattr(self.synthesis, self.synthesis.layer_names[j - 1])

    # ------------------------------------------------------------------ running stages
    def _run(self, w: Tensor, h: Optional[Tensor], start: int, stop: int) -> Optional[Tensor]:
        """Run stages ``start .. stop-1``; ``w`` holds W+ rows from ``start``; returns the activation."""
        for j in range(start, stop):
            wj = w[:, j - start]
            h = self.synthesis.input(wj) if j == 0 else self._stage(j)(h, wj)
            h = h.float()
        return h

    def state_names(self, split: int) -> List[str]:
        """The entry names of the state at ``split``, in order."""
        self.check_split(split)
        return (["h"] if split > 0 else []) + ["latent"] + self._condition_names()

    # ------------------------------------------------------------------ SplitGenerator protocol
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        """``G1``: the state at split ``stop`` from the state at ``start``."""
        self._check_state(state, start)
        self.check_advance(start, stop)
        out: State = {}
        h = state.get("h")
        if stop > start:
            h = self._run(self._w(state), h, start, stop)
        if h is not None:
            out["h"] = h
        out["latent"] = state["latent"][:, stop - start :]
        for name in self._condition_names():
            out[name] = state[name]
        return out

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        """``G2``: the image ``[B, C, H, W]`` from the state at ``split``."""
        self._check_state(state, split)
        x = self._run(self._w(state), state.get("h"), split, self.num_stages)
        return x * self.synthesis.output_scale

    # ------------------------------------------------------------------ NVIDIA's API
    def synthesize(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True) -> Tensor:
        """``G.synthesis(ws)``: computed in float32; ``noise_mode`` is accepted and ignored (no noise inputs)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        if ws.dim() != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}]; got {tuple(ws.shape)}")
        return self._run(ws.float(), None, 0, self.num_stages) * self.synthesis.output_scale


StyleGAN3Generator.__module__ = "ilo_pl.modules.generators.nvlabs"
