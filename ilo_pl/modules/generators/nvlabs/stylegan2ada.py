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
``class_label``          each problem's class ``[B]`` (conditional      condition
                         networks only; see ``nvlabs.mapping``)
=======================  ============================================  ========

so ``render(advance(v, 0, k), k) == render(v, 0)`` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ilo_pl.checkpoints import load_state_dict_strict
from ilo_pl.modules.generators.base import State
from ilo_pl.modules.generators.nvlabs.mapping import (
    LATENT_SPACES,
    NOISE_MODES,
    FullyConnectedLayer,
    MappingNetwork,
    NVLabsGenerator,
    mapping_spec,
)
from ilo_pl.modules.generators.nvlabs.ops import (
    ACT_GAIN,
    as_float,
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    upfirdn2d,
)
from ilo_pl.modules.generators.nvlabs.pickle_reader import (
    NetworkPickleError,
    PersistentRecord,
    read_network_pickle,
    record_state_dict,
    take_generator,
    walk,
)
from ilo_pl.modules.generators.stylegan2.layers import ModconvImplOption

__all__ = ["ARCHITECTURES", "LATENT_SPACES", "NOISE_MODES", "FullyConnectedLayer", "MappingNetwork", "StyleGAN2ADAGenerator"]

ARCHITECTURES = ("orig", "skip", "resnet")
PathLike = Union[str, Path]


def _setup_filter(taps: Sequence[float]) -> Tensor:
    k = torch.tensor([float(t) for t in taps], dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


# ----------------------------------------------------------------------------- layers
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
    m = mapping_spec(mapping, w_avg_beta=0.995)
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
class StyleGAN2ADAGenerator(ModconvImplOption, NVLabsGenerator):
    """NVIDIA's StyleGAN-2 (ADA / stylegan3 repository), read safely from a network pickle.

    Options, class labels, mapping statistics and NVIDIA's ``G(z, c, ...)`` are
    :class:`~ilo_pl.modules.generators.nvlabs.mapping.NVLabsGenerator`'s.

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
        class_label: conditional snapshots only: the default class of every
            problem (an int), for problems whose data give none (``labels`` of
            :meth:`init_variables`, the data's ``class_labels``). It enters
            through the mapping network (initial W+ rows, Gaussian fit); each
            problem's class is kept in its state (entry ``class_label``).
        gaussian_fit_samples, stats_seed: the Gaussian fit's draws.
        mean_latent_samples: ``w_avg`` is the snapshot's tracked average;
            with random weights it is the mean of this many mapped ``z``
            (of every class in turn for a conditional network).
        modconv_impl: ``"auto"``, ``"fused"`` or ``"unfused"`` (the rosinality
            generator's option and rule; same function up to rounding).
        fp16: run NVIDIA's fp16 blocks in float16 on GPUs (as NVIDIA does);
            on the CPU they always run in float32. Default ``False``.

    Raises:
        FileNotFoundError, NetworkPickleError, ValueError.
    """

    # The first release drew z in both latent spaces: kept, so seeded starts stay the same.
    _draws_z_always = True
    _modconv_layers = (SynthesisLayer, ToRGBLayer)

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
        class_label: Optional[int] = None,
        mean_latent_samples: int = 4096,
        gaussian_fit_samples: int = 100_000,
        stats_seed: int = 0,
        modconv_impl: str = "auto",
        fp16: bool = False,
        _snapshot: Optional[Any] = None,
    ) -> None:
        super().__init__()
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
        self._configure(
            spec, latent_space=latent_space, init_truncation=init_truncation, noise_mode=noise_mode,
            class_label=class_label, mean_latent_samples=mean_latent_samples,
            gaussian_fit_samples=gaussian_fit_samples, stats_seed=stats_seed, modconv_impl=modconv_impl,
            w_avg_recorded=sd is not None,
        )
        self.fp16 = bool(fp16)
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
        if sd is not None:
            # Filters: the recorded tensors replace the defaults (their shapes come from the file).
            load_state_dict_strict(self, sd, f"{checkpoint} ({network}) does not match the StyleGAN2-ADA architecture "
                                   f"read from its recorded attributes")
            self._apply_recorded_gains(record)
        self.modconv_impl = modconv_impl
        self.freeze()

    # ------------------------------------------------------------------ construction helpers
    def _apply_recorded_gains(self, record: PersistentRecord) -> None:
        """Take the recorded per-layer constants (gains, clamps, activations) over the defaults."""
        mods = dict(self.named_modules())
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

    def _blocks(self) -> Iterator[SynthesisBlock]:
        for r in self.synthesis.block_resolutions:
            yield getattr(self.synthesis, f"b{r}")

    def architecture(self) -> str:
        """``"orig"``, ``"skip"`` or ``"resnet"``."""
        return next(self._blocks()).architecture

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
        return names + self._condition_names()

    def _blocks_upto(self, split: int) -> List[SynthesisBlock]:
        """Blocks whose last conv is before ``split`` (their ToRGB, if any, has run)."""
        done = []
        for j in range(split):
            block, _, i = self._convs[j]
            if i == len(block.convs()) - 1:
                done.append(block)
        return done

    def _noises(self, state: Mapping[str, Tensor]) -> List[Optional[Tensor]]:
        return [state.get(f"noise_{j}") for j in range(self.num_layers)]

    # ------------------------------------------------------------------ SplitGenerator protocol
    def _initial_noises(self, batch_size: int, generator: Optional[torch.Generator]) -> State:
        """``noise_mode`` ``"random"``: ``N(0, 1)`` maps; ``"const"``: the snapshot's; ``"none"``: no entries."""
        out: State = {}
        if self.noise_mode != "none":
            for j in range(self.num_layers):
                r = self._noise_res(j)
                if self.noise_mode == "const":
                    out[f"noise_{j}"] = self._convs[j][1].noise_const.expand(batch_size, 1, r, r).clone()
                else:
                    out[f"noise_{j}"] = torch.randn(batch_size, 1, r, r, generator=generator).to(self.device)
        return out

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        """``G1``: the state at split ``stop`` from the state at ``start``."""
        self._check_state(state, start)
        self.check_advance(start, stop)
        if stop > start:
            out: State = self._run(self._w(state), self._noises(state), state, start, stop)
        else:
            out = {n: state[n] for n in ("h", "skip", "residual") if n in state}
        out["latent"] = state["latent"][:, stop - start :]
        if self.noise_mode != "none":
            for j in range(stop, self.num_layers):
                out[f"noise_{j}"] = state[f"noise_{j}"]
        for name in self._condition_names():
            out[name] = state[name]
        return {n: out[n] for n in self.state_names(stop)}

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        """``G2``: the image ``[B, C, H, W]`` from the state at ``split``."""
        self._check_state(state, split)
        return self._run(self._w(state), self._noises(state), state, split, self.num_layers)["skip"]

    def render_settings(self) -> Dict[str, object]:
        """``latent_space``, ``noise_mode`` (``"none"`` renders differently) and the Gaussian fit's inputs."""
        return {**super().render_settings(), "noise_inputs": self.noise_mode != "none"}

    # ------------------------------------------------------------------ NVIDIA's API
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
