"""NVIDIA's StyleGAN-2 (StyleGAN2-ADA / stylegan3 repository), split at every convolution layer.

Written from the architecture (Karras et al. 2020, "Analyzing and Improving
the Image Quality of StyleGAN" and "Training GANs with Limited Data") and the
facts recorded in NVIDIA's snapshots; the module names and state-dict keys
are NVIDIA's (``mapping.fc0.weight``, ``synthesis.b4.conv1.affine.bias``,
...), so a snapshot's ``G_ema`` loads with ``strict=True``.

Blocks and split points
-----------------------
The synthesis network is a chain of ``L`` modulated convolution layers
``conv_0 .. conv_{L-1}``: ``conv_0`` is ``b4.conv1``; each later resolution
block ``b{r}`` has ``conv0`` (2x upsampling) then ``conv1``. Layer ``conv_j``
reads W+ row ``j`` and noise ``noise_j`` ``[B, 1, r, r]``; a ToRGB after the
last conv ``conv_j`` of a block reads row ``j + 1`` (``skip`` architecture:
every block; ``orig``/``resnet``: the last block only).

Split ``k`` sits after ``conv_{k-1}`` (and its ToRGB), ``k = 0 .. L-1``
(``num_splits = L - 1``: the split after the last layer is left out, as for
the rosinality generator). The state at split ``k``:

=======================  ============================================  ========
entry                    what                                          group
=======================  ============================================  ========
``h`` (k >= 1)           activation after ``conv_{k-1}`` (float32)     state
``skip``                 RGB accumulated so far (``skip`` arch., k>=1)  skip
``residual``             the resnet shortcut of the current block       state
                         (``resnet`` arch., in the middle of a block)
``latent``               W+ rows ``k .. num_ws-1``                     latent
``noise_i``, ``i >= k``  noise maps (absent with ``noise_mode="none"``)  noise
=======================  ============================================  ========

so ``render(advance(v, 0, k), k) == render(v, 0)`` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.checkpoints import load_state_dict_strict
from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.modules.generators.nvlabs.ops import (
    ACT_GAIN,
    MODCONV_IMPLS,
    as_float,
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    normalize_2nd_moment,
    upfirdn2d,
)
from ilo_pl.modules.generators.nvlabs.pickle_reader import (
    NetworkPickleError,
    PersistentRecord,
    read_network_pickle,
    record_state_dict,
    take_generator,
)
from ilo_pl.policy import check_impl

__all__ = ["ARCHITECTURES", "LATENT_SPACES", "NOISE_MODES", "StyleGAN2ADAGenerator"]

ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("random", "const", "none")
LATENT_SPACES = ("w+", "gaussian_fit")
PathLike = Union[str, Path]


def _setup_filter(taps: Sequence[float]) -> Tensor:
    k = torch.tensor([float(t) for t in taps], dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


# ----------------------------------------------------------------------------- layers
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


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optional 2x up), noise, bias, leaky ReLU with gain and clamp."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3, up: int = 1,
        use_noise: bool = True, resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.activation = "lrelu"
        self.padding = kernel_size // 2
        self.act_gain = ACT_GAIN["lrelu"]
        self.impl = "auto"
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x: Tensor, w: Tensor, noise: Optional[Tensor] = None, gain: float = 1.0) -> Tensor:
        """``noise``: a unit noise map ``[B or 1, 1, r, r]`` (scaled by ``noise_strength`` here) or ``None``."""
        styles = self.affine(w.to(torch.float32))
        if noise is not None and self.use_noise:
            noise = noise.to(torch.float32) * self.noise_strength
        else:
            noise = None
        x = modulated_conv2d(
            x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, flip_weight=(self.up == 1), impl=self.impl,
        )
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, bias, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: Optional[float] = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.impl = "auto"
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w.to(torch.float32)) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, impl=self.impl)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Plain equalised convolution (the ``resnet`` shortcut: 1x1, 2x up, no bias)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = False, up: int = 2,
        resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None, activation: str = "linear",
    ) -> None:
        super().__init__()
        self.up, self.conv_clamp, self.activation = up, conv_clamp, activation
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACT_GAIN[activation]
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, padding=self.padding, flip_weight=(self.up == 1))
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class SynthesisBlock(nn.Module):
    """One resolution block: (const or conv0 with 2x up), conv1, ToRGB / resnet shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, is_last: bool,
        architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: Optional[float] = None, use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.is_last, self.architecture, self.use_fp16 = is_last, architecture, use_fp16
        self.register_buffer("resample_filter", _setup_filter(resample_filter))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.has_torgb = is_last or architecture == "skip"
        if self.has_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2, resample_filter=resample_filter)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = int(self.has_torgb)

    def convs(self) -> List[SynthesisLayer]:
        """The block's conv layers in order."""
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]


# ----------------------------------------------------------------------------- architecture spec
def _spec_from_kwargs(
    z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
    mapping_kwargs: Optional[Mapping[str, Any]] = None, channel_base: int = 32768, channel_max: int = 512,
    num_fp16_res: int = 0, conv_clamp: Optional[float] = None, architecture: str = "skip",
    resample_filter: Sequence[float] = (1, 3, 3, 1), **unused: Any,
) -> Dict[str, Any]:
    """The architecture spec from NVIDIA's constructor arguments (for random weights)."""
    log2 = int(round(math.log2(img_resolution)))
    if img_resolution < 4 or 2**log2 != img_resolution:
        raise ValueError(f"img_resolution must be a power of two >= 4; got {img_resolution}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
    res = [2**i for i in range(2, log2 + 1)]
    ch = {r: min(channel_base // r, channel_max) for r in res}
    fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
    blocks = []
    for r in res:
        blocks.append(dict(
            resolution=r, in_channels=ch[r // 2] if r > 4 else 0, out_channels=ch[r], is_last=(r == img_resolution),
            architecture=architecture, use_fp16=(r >= fp16_res), conv_clamp=conv_clamp,
            resample_filter_taps=tuple(resample_filter),
        ))
    num_ws = sum(1 if b["in_channels"] == 0 else 2 for b in blocks) + 1
    mk = dict(mapping_kwargs or {})
    mapping = dict(
        num_layers=int(mk.get("num_layers", 8)), embed_features=mk.get("embed_features"),
        layer_features=mk.get("layer_features"), lr_multiplier=float(mk.get("lr_multiplier", 0.01)),
        w_avg_beta=float(mk.get("w_avg_beta", 0.995)),
    )
    return dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                num_ws=num_ws, mapping=mapping, blocks=blocks)


def _spec_from_record(rec: PersistentRecord, source: str) -> Dict[str, Any]:
    """The architecture spec from a recorded ``Generator`` (attributes and tensor shapes; never the source)."""
    if rec.class_name != "Generator":
        raise NetworkPickleError(f"{source}: G_ema is a {rec.class_name!r}, not a StyleGAN Generator")
    mapping, synthesis = rec.child("mapping"), rec.child("synthesis")
    if mapping is None or synthesis is None:
        raise NetworkPickleError(f"{source}: the generator lacks its mapping or synthesis network")
    if synthesis.class_name != "SynthesisNetwork" or synthesis.attr("block_resolutions") is None:
        raise NetworkPickleError(
            f"{source}: the synthesis network ({synthesis.class_name}) is not StyleGAN-2's "
            "(no block_resolutions; a StyleGAN3 pickle? use StyleGAN3Generator or load_generator)"
        )
    fc0 = mapping.child("fc0")
    embed = mapping.child("embed")
    n_layers = int(mapping.attr("num_layers"))
    m = dict(
        num_layers=n_layers,
        embed_features=None if embed is None else int(embed.state["_parameters"]["weight"].shape[0]),
        layer_features=int(fc0.state["_parameters"]["weight"].shape[0]) if n_layers > 1 else None,
        lr_multiplier=float(fc0.attr("bias_gain")),
        w_avg_beta=float(mapping.attr("w_avg_beta") or 0.995),
    )
    blocks = []
    for r in synthesis.attr("block_resolutions"):
        b = synthesis.child(f"b{r}")
        if b is None:
            raise NetworkPickleError(f"{source}: synthesis block b{r} is missing")
        conv1 = b.child("conv1")
        out_ch = int(conv1.state["_parameters"]["weight"].shape[0])
        rf = b.state["_buffers"]["resample_filter"]
        blocks.append(dict(
            resolution=int(b.attr("resolution")), in_channels=int(b.attr("in_channels")), out_channels=out_ch,
            is_last=bool(b.attr("is_last")), architecture=str(b.attr("architecture")),
            use_fp16=bool(b.attr("use_fp16")), conv_clamp=as_float(conv1.attr("conv_clamp")),
        ))
        if tuple(rf.shape) != (4, 4):
            raise NetworkPickleError(f"{source}: block b{r} has a {tuple(rf.shape)} resample filter; expected 4x4")
        if blocks[-1]["architecture"] not in ARCHITECTURES:
            raise NetworkPickleError(f"{source}: unknown block architecture {blocks[-1]['architecture']!r}")
    return dict(
        z_dim=int(rec.attr("z_dim")), c_dim=int(rec.attr("c_dim")), w_dim=int(rec.attr("w_dim")),
        img_resolution=int(rec.attr("img_resolution")), img_channels=int(rec.attr("img_channels")),
        num_ws=int(rec.attr("num_ws")), mapping=m, blocks=blocks,
    )


# ----------------------------------------------------------------------------- synthesis with NVIDIA's call
class SynthesisNetwork(nn.Module):
    """The synthesis network (blocks ``b4 .. b{res}``); ``synthesis(ws, noise_mode=...)`` is NVIDIA's call."""

    def __init__(self, spec: Mapping[str, Any], owner: "StyleGAN2ADAGenerator") -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = spec["w_dim"], spec["img_resolution"], spec["img_channels"]
        self.block_resolutions = [b["resolution"] for b in spec["blocks"]]
        self.num_ws = spec["num_ws"]
        for b in spec["blocks"]:
            # Filters start as [1, 3, 3, 1]; a snapshot's recorded filters replace them (strict load).
            taps = b.get("resample_filter_taps", (1, 3, 3, 1))
            setattr(self, f"b{b['resolution']}", SynthesisBlock(
                b["in_channels"], b["out_channels"], spec["w_dim"], b["resolution"], spec["img_channels"],
                b["is_last"], architecture=b["architecture"], resample_filter=taps,
                conv_clamp=b["conv_clamp"], use_fp16=b["use_fp16"],
            ))
        self.__dict__["_owner"] = owner

    def forward(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True, **_: Any) -> Tensor:
        """``G.synthesis(ws, noise_mode=..., force_fp32=...)``: ``[B, C, H, W]`` from ``ws`` ``[B, num_ws, w_dim]``."""
        return self.__dict__["_owner"].synthesize(ws, noise_mode=noise_mode, force_fp32=force_fp32)


# ----------------------------------------------------------------------------- the generator
class StyleGAN2ADAGenerator(SplitGenerator):
    """NVIDIA's StyleGAN-2 (ADA / stylegan3 repository), read safely from a network pickle.

    Args:
        checkpoint: an NVIDIA network pickle (``.pkl``; read with
            :func:`~ilo_pl.modules.generators.nvlabs.pickle_reader.read_network_pickle`,
            nothing from the file is run); its ``network`` entry (``G_ema``) is
            loaded strictly. ``None``: random weights from the architecture
            arguments below (NVIDIA's constructor arguments).
        network: which network of a snapshot to take (``"G_ema"``; ``"G"`` only for tests).
        z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
            channel_base, channel_max, num_fp16_res, conv_clamp, architecture:
            NVIDIA's constructor arguments (random weights only).
        latent_space: ``"w+"`` or ``"gaussian_fit"`` (PULSE's proxy, as the
            rosinality generator's).
        init_truncation: initial W+ rows ``w_avg + t * (mapping(z, c) - w_avg)``.
        noise_mode: ``"random"`` (initial noises ``N(0, 1)``, optimised by ILO),
            ``"const"`` (initial noises are the snapshot's ``noise_const``) or
            ``"none"`` (no noise inputs: the state has no ``noise_i``).
        class_label: for conditional snapshots, the class of each problem (an
            int for all, or one per problem, cycled over the batch); it enters
            through the mapping network (initial W+ rows, Gaussian fit).
        gaussian_fit_samples, stats_seed: the Gaussian fit's draws.
        mean_latent_samples: ``w_avg`` is the snapshot's tracked average;
            with random weights it is the mean of this many mapped ``z``.
        modconv_impl: ``"auto"``, ``"fused"`` or ``"unfused"`` (the rosinality
            generator's option and rule; same function up to rounding).
        fp16: run NVIDIA's fp16 blocks in float16 on GPUs (as NVIDIA does);
            on the CPU they always run in float32. Default ``False``.

    Raises:
        FileNotFoundError, NetworkPickleError, ValueError.
    """

    def __init__(
        self,
        checkpoint: Optional[PathLike] = None,
        network: str = "G_ema",
        z_dim: int = 512,
        c_dim: int = 0,
        w_dim: int = 512,
        img_resolution: Optional[int] = None,
        img_channels: int = 3,
        mapping_kwargs: Optional[Mapping[str, Any]] = None,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: Optional[float] = None,
        architecture: str = "skip",
        latent_space: str = "w+",
        init_truncation: float = 0.7,
        noise_mode: str = "random",
        class_label: Union[int, Sequence[int], None] = None,
        mean_latent_samples: int = 4096,
        gaussian_fit_samples: int = 100_000,
        stats_seed: int = 0,
        modconv_impl: str = "auto",
        fp16: bool = False,
        _snapshot: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if latent_space not in LATENT_SPACES:
            raise ValueError(f"latent_space must be one of {LATENT_SPACES}; got {latent_space!r}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        check_impl("StyleGAN2ADAGenerator(modconv_impl=...)", modconv_impl, MODCONV_IMPLS)
        sd = None
        record = None
        if checkpoint is not None:
            source = str(checkpoint)
            snapshot = _snapshot if _snapshot is not None else read_network_pickle(checkpoint)
            record = take_generator(snapshot, network, checkpoint)
            spec = _spec_from_record(record, source)
            sd = record_state_dict(record)
        else:
            if img_resolution is None:
                raise ValueError("StyleGAN2ADAGenerator needs a `checkpoint` (.pkl), or img_resolution for random weights")
            spec = _spec_from_kwargs(
                z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, channel_base=channel_base,
                channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, architecture=architecture,
            )
        self.spec = spec
        self.z_dim, self.c_dim, self.w_dim = spec["z_dim"], spec["c_dim"], spec["w_dim"]
        self.img_resolution, self.img_channels, self.num_ws = spec["img_resolution"], spec["img_channels"], spec["num_ws"]
        self.image_shape = (self.img_channels, self.img_resolution, self.img_resolution)
        self.latent_space, self.noise_mode = latent_space, noise_mode
        self.init_truncation = float(init_truncation)
        self.mean_latent_samples, self.gaussian_fit_samples = int(mean_latent_samples), int(gaussian_fit_samples)
        self.stats_seed, self.fp16 = int(stats_seed), bool(fp16)
        if class_label is None:
            labels: List[int] = []
        elif isinstance(class_label, int):
            labels = [class_label]
        else:
            labels = [int(c) for c in class_label]
        if self.c_dim > 0 and not labels:
            labels = [0]
        bad = [c for c in labels if not 0 <= c < max(self.c_dim, 1)]
        if self.c_dim == 0 and class_label is not None:
            raise ValueError("class_label given, but this generator is unconditional (c_dim 0)")
        if bad:
            raise ValueError(f"class_label {bad} out of range 0..{self.c_dim - 1}")
        self.class_labels = labels

        m = spec["mapping"]
        self.mapping = MappingNetwork(
            self.z_dim, self.c_dim, self.w_dim, self.num_ws, num_layers=m["num_layers"],
            embed_features=m["embed_features"], layer_features=m["layer_features"],
            lr_multiplier=m["lr_multiplier"], w_avg_beta=m["w_avg_beta"],
        )
        self.synthesis = SynthesisNetwork(spec, self)
        # Conv layers in order: (block, layer), and the W+ row of each ToRGB.
        self._convs: List[Tuple[SynthesisBlock, SynthesisLayer, int]] = []
        for b in self._blocks():
            for i, layer in enumerate(b.convs()):
                self._convs.append((b, layer, i))
        self.num_layers = len(self._convs)
        if self.num_layers + 1 != self.num_ws:
            raise ValueError(f"{self.num_layers} conv layers need {self.num_layers + 1} W+ rows; the network has {self.num_ws}")
        self.num_splits = self.num_layers - 1
        self.register_buffer("gaussian_fit_mean", torch.zeros(self.w_dim), persistent=False)
        self.register_buffer("gaussian_fit_std", torch.ones(self.w_dim), persistent=False)
        self._stats_ready = {"w_avg": sd is not None, "gaussian_fit": False}
        if sd is not None:
            # Filters: the recorded tensors replace the defaults (their shapes come from the file).
            load_state_dict_strict(self, sd, f"{checkpoint} ({network}) does not match the StyleGAN2-ADA architecture "
                                   f"read from its recorded attributes")
            self._apply_recorded_gains(record)
        self.modconv_impl = modconv_impl
        self.freeze()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_checkpoint(cls, path: PathLike, **kwargs: Any) -> "StyleGAN2ADAGenerator":
        """Build the generator of a network pickle (path only; architecture read from the file)."""
        return cls(checkpoint=path, **kwargs)

    def _apply_recorded_gains(self, record: PersistentRecord) -> None:
        """Take the recorded per-layer constants (gains, clamps, activations) over the defaults."""
        mods = dict(self.named_modules())
        from ilo_pl.modules.generators.nvlabs.pickle_reader import walk

        for name, rec in walk(record):
            mod = mods.get(name)
            if mod is None:
                continue
            for attr in ("weight_gain", "bias_gain", "act_gain", "conv_clamp"):
                if attr in rec.state and hasattr(mod, attr):
                    setattr(mod, attr, as_float(rec.attr(attr)))
            if "activation" in rec.state and hasattr(mod, "activation"):
                act = rec.attr("activation")
                if act not in ACT_GAIN:
                    raise NetworkPickleError(f"layer {name}: unsupported activation {act!r}")
                mod.activation = act

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # noqa: ANN201
        """``nn.Module.load_state_dict`` that also forgets the cached Gaussian fit."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._stats_ready = {"w_avg": True, "gaussian_fit": False}
        return result

    @property
    def modconv_impl(self) -> str:
        """How the modulated convolutions run (``"auto"``, ``"fused"`` or ``"unfused"``); settable."""
        return self._modconv_impl

    @modconv_impl.setter
    def modconv_impl(self, impl: str) -> None:
        check_impl("StyleGAN2ADAGenerator.modconv_impl", impl, MODCONV_IMPLS)
        self.__dict__["_modconv_impl"] = impl
        for module in self.modules():
            if isinstance(module, (SynthesisLayer, ToRGBLayer)):
                module.impl = impl

    def _blocks(self) -> Iterator[SynthesisBlock]:
        for r in self.synthesis.block_resolutions:
            yield getattr(self.synthesis, f"b{r}")

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.mapping.w_avg.device

    def architecture(self) -> str:
        """``"orig"``, ``"skip"`` or ``"resnet"``."""
        return next(self._blocks()).architecture

    # ------------------------------------------------------------------ mapping statistics
    def _labels_onehot(self, n: int, device: torch.device, offset: int = 0) -> Optional[Tensor]:
        if self.c_dim == 0:
            return None
        idx = torch.tensor([self.class_labels[(offset + i) % len(self.class_labels)] for i in range(n)])
        return F.one_hot(idx, self.c_dim).to(device, torch.float32)

    def _mapped_samples(self, n: int, chunk: int = 8192) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.stats_seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = torch.randn(m, self.z_dim, generator=gen).to(self.device)
            yield self.mapping(z, self._labels_onehot(m, self.device))[:, 0]

    @torch.no_grad()
    def average_latent(self) -> Tensor:
        """``w_avg`` ``[1, w_dim]``: the snapshot's tracked average (random weights: a seeded mean)."""
        if not self._stats_ready["w_avg"]:
            total = torch.zeros(self.w_dim, dtype=torch.float64, device=self.device)
            for w in self._mapped_samples(self.mean_latent_samples):
                total += w.double().sum(0)
            self.mapping.w_avg.copy_(total / self.mean_latent_samples)
            self._stats_ready["w_avg"] = True
        return self.mapping.w_avg[None]

    @torch.no_grad()
    def gaussian_fit(self) -> Tuple[Tensor, Tensor]:
        """PULSE's Gaussian fit ``(mu, sigma)`` of ``leaky_relu(mapping(z), 5)``, each ``[w_dim]``."""
        if not self._stats_ready["gaussian_fit"]:
            s1 = torch.zeros(self.w_dim, dtype=torch.float64, device=self.device)
            s2 = torch.zeros_like(s1)
            for w in self._mapped_samples(self.gaussian_fit_samples):
                u = F.leaky_relu(w, 5.0).double()
                s1 += u.sum(0)
                s2 += u.pow(2).sum(0)
            n = self.gaussian_fit_samples
            mean = s1 / n
            self.gaussian_fit_mean.copy_(mean)
            self.gaussian_fit_std.copy_(((s2 - n * mean.pow(2)).clamp_min(0) / (n - 1)).sqrt())
            self._stats_ready["gaussian_fit"] = True
        return self.gaussian_fit_mean, self.gaussian_fit_std

    def latent_to_w(self, latent: Tensor) -> Tensor:
        """Map the ``latent`` state entry to W+ rows."""
        if self.latent_space == "w+":
            return latent
        mean, std = self.gaussian_fit()
        return F.leaky_relu(latent * std.to(latent.dtype) + mean.to(latent.dtype), 0.2)

    # ------------------------------------------------------------------ running layers
    def _dtype(self, block: SynthesisBlock, device: torch.device, force_fp32: bool) -> torch.dtype:
        if block.use_fp16 and self.fp16 and not force_fp32 and device.type == "cuda":
            return torch.float16
        return torch.float32

    def _noise_res(self, j: int) -> int:
        return self._convs[j][1].resolution

    def _run(
        self, w: Tensor, noises: Sequence[Optional[Tensor]], carry: Mapping[str, Tensor], start: int, stop: int,
        force_fp32: bool = False,
    ) -> Dict[str, Tensor]:
        """Run conv layers ``start .. stop-1``; ``w`` holds W+ rows from ``start``; returns the carried entries."""
        h = carry.get("h")
        img = carry.get("skip")
        residual = carry.get("residual")
        b = w.shape[0]
        sqrt_half = math.sqrt(0.5)
        for j in range(start, stop):
            block, layer, i = self._convs[j]
            dtype = self._dtype(block, w.device, force_fp32)
            if block.in_channels == 0:
                x = block.const.to(dtype).unsqueeze(0).repeat(b, 1, 1, 1)
            else:
                x = h.to(dtype)
            gain = 1.0
            if block.architecture == "resnet" and block.in_channels != 0:
                if i == 0:
                    residual = block.skip(x, gain=sqrt_half).float()
                else:
                    gain = sqrt_half
            x = layer(x, w[:, j - start], noise=noises[j], gain=gain)
            if block.architecture == "resnet" and block.in_channels != 0 and i == 1:
                x = residual.to(x.dtype) + x
                residual = None
            h = x.float()
            if i == len(block.convs()) - 1:  # end of block: RGB
                if img is not None:
                    img = upfirdn2d(img, block.resample_filter, up=2, padding=[2, 1, 2, 1], gain=4)
                if block.has_torgb:
                    y = block.torgb(x, w[:, j + 1 - start]).float()
                    img = img + y if img is not None else y
        out: Dict[str, Tensor] = {}
        if h is not None:
            out["h"] = h
        if img is not None:
            out["skip"] = img
        if residual is not None:
            out["residual"] = residual
        return out

    def state_names(self, split: int) -> List[str]:
        """The entry names of the state at ``split``, in order."""
        self.check_split(split)
        names: List[str] = []
        if split > 0:
            names.append("h")
            block, _, i = self._convs[split - 1]
            if any(b.has_torgb for b in self._blocks_upto(split)):
                names.append("skip")
            if block.architecture == "resnet" and block.in_channels != 0 and i == 0:
                names.append("residual")
        names.append("latent")
        if self.noise_mode != "none":
            names += [f"noise_{j}" for j in range(split, self.num_layers)]
        return names

    def _blocks_upto(self, split: int) -> List[SynthesisBlock]:
        """Blocks whose last conv is before ``split`` (their ToRGB, if any, has run)."""
        done = []
        for j in range(split):
            block, _, i = self._convs[j]
            if i == len(block.convs()) - 1:
                done.append(block)
        return done

    def _check_state(self, state: Mapping[str, Tensor], split: int) -> None:
        missing = [n for n in self.state_names(split) if n not in state]
        if missing:
            raise ValueError(
                f"the state at split {split} lacks entries {missing}; it needs {self.state_names(split)} "
                "(make it with init_variables() and advance())"
            )
        lat = state["latent"]
        rows = self.num_ws - split
        if lat.dim() != 3 or tuple(lat.shape[1:]) != (rows, self.w_dim):
            raise ValueError(f"state['latent'] at split {split} must be [B, {rows}, {self.w_dim}]; got {tuple(lat.shape)}")

    def _noises(self, state: Mapping[str, Tensor]) -> List[Optional[Tensor]]:
        return [state.get(f"noise_{j}") for j in range(self.num_layers)]

    # ------------------------------------------------------------------ SplitGenerator protocol
    @torch.no_grad()
    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        """Initial W+ rows (own ``z`` per row) and noises (``noise_mode``) for ``batch_size`` problems."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        dev = self.device
        z = torch.randn(batch_size, self.num_ws, self.z_dim, generator=generator)
        if self.latent_space == "w+":
            avg = self.average_latent()
            c = self._labels_onehot(batch_size, dev)
            c = None if c is None else c.repeat_interleave(self.num_ws, 0)
            w = self.mapping(z.reshape(-1, self.z_dim).to(dev), c)[:, 0].reshape(batch_size, self.num_ws, self.w_dim)
            latent = avg + self.init_truncation * (w - avg)
        else:
            latent = torch.randn(batch_size, self.num_ws, self.w_dim, generator=generator).to(dev)
        state: State = {"latent": latent}
        if self.noise_mode != "none":
            for j in range(self.num_layers):
                r = self._noise_res(j)
                if self.noise_mode == "const":
                    state[f"noise_{j}"] = self._convs[j][1].noise_const.expand(batch_size, 1, r, r).clone()
                else:
                    state[f"noise_{j}"] = torch.randn(batch_size, 1, r, r, generator=generator).to(dev)
        return state

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        """``G1``: the state at split ``stop`` from the state at ``start``."""
        self._check_state(state, start)
        self.check_split(stop)
        if stop < start:
            raise ValueError(f"cannot advance from split {start} back to split {stop}")
        if stop > start:
            out: State = self._run(self.latent_to_w(state["latent"]), self._noises(state), state, start, stop)
        else:
            out = {n: state[n] for n in ("h", "skip", "residual") if n in state}
        out["latent"] = state["latent"][:, stop - start :]
        if self.noise_mode != "none":
            for j in range(stop, self.num_layers):
                out[f"noise_{j}"] = state[f"noise_{j}"]
        return {n: out[n] for n in self.state_names(stop)}

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        """``G2``: the image ``[B, C, H, W]`` from the state at ``split``."""
        self._check_state(state, split)
        return self._run(self.latent_to_w(state["latent"]), self._noises(state), state, split, self.num_layers)["skip"]

    def groups(self, split: int) -> Dict[str, str]:
        """``h``, ``residual`` -> ``state``; ``skip`` -> ``skip``; ``latent``; ``noise_i`` -> ``noise``."""
        special = {"h": "state", "residual": "state", "skip": "skip", "latent": "latent"}
        return {n: special.get(n, "noise") for n in self.state_names(split)}

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        """The noises (norm over ``(1, 2, 3)``) and, in ``"gaussian_fit"`` mode, each latent row."""
        self.check_split(split)
        out: Dict[str, Tuple[int, ...]] = {}
        if self.noise_mode != "none":
            out = {f"noise_{j}": (1, 2, 3) for j in range(split, self.num_layers)}
        if self.latent_space == "gaussian_fit":
            out["latent"] = (2,)
        return out

    def render_settings(self) -> Dict[str, object]:
        """``latent_space``, ``noise_mode`` (``"none"`` renders differently) and the Gaussian fit's inputs."""
        out: Dict[str, object] = {"latent_space": self.latent_space, "noise_inputs": self.noise_mode != "none"}
        if self.latent_space == "gaussian_fit":
            out.update(gaussian_fit_samples=self.gaussian_fit_samples, stats_seed=self.stats_seed,
                       class_labels=list(self.class_labels))
        return out

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

    def synthesize(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True) -> Tensor:
        """``G.synthesis(ws, noise_mode=...)``: ``noise_mode`` ``"const"`` (the snapshot's maps), ``"random"``, ``"none"``."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        if ws.dim() != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}]; got {tuple(ws.shape)}")
        noises: List[Optional[Tensor]] = []
        for _, layer, _ in self._convs:
            r = layer.resolution
            if noise_mode == "const":
                noises.append(layer.noise_const[None, None])
            elif noise_mode == "random":
                noises.append(torch.randn(ws.shape[0], 1, r, r, device=ws.device))
            else:
                noises.append(None)
        return self._run(ws.to(torch.float32), noises, {}, 0, self.num_layers, force_fp32=force_fp32)["skip"]


StyleGAN2ADAGenerator.__module__ = "ilo_pl.modules.generators.nvlabs"
