"""StyleGAN-2 generator (config-e/f architecture), split at every convolution layer.

The network follows Karras et al. (CVPR 2020) as laid out by the widely used
PyTorch port of StyleGAN-2 (rosinality's ``model.py``): its ``state_dict`` has
exactly that port's keys, so the ``g_ema`` of a checkpoint of that port (e.g.
``stylegan2-ffhq-config-f.pt``) loads with ``strict=True``, and
:meth:`StyleGAN2Generator.synthesize` (also reachable as ``g(styles, ...)``)
takes that port's arguments.

Blocks and split points
-----------------------
The synthesis network is a chain of ``L = 2 * log2(size) - 3`` modulated
convolution layers ``conv_0 .. conv_{L-1}`` (``conv_0`` is ``conv1`` at 4x4;
``conv_{2m+1}`` upsamples, ``conv_{2m+2}`` follows it at the same resolution).
A ToRGB layer follows ``conv_0`` and every ``conv_{2m+2}`` and adds its RGB
output to the (upsampled) running RGB *skip*. Layer ``conv_j`` reads W+ row
``j`` and noise map ``noise_j``; the ToRGB after ``conv_j`` reads row ``j+1``.

Split ``k`` sits after ``conv_{k-1}`` (and its ToRGB, if any), for
``k = 0 .. L-1`` (``num_splits = L - 1``). The state at split ``k``:

=========================  ==========================================  ======
entry                      shape                                       group
=========================  ==========================================  ======
``h`` (k >= 1)             activation after ``conv_{k-1}``             state
``skip`` (k >= 1)          RGB accumulated so far (not yet upsampled)  skip
``latent``                 W+ rows ``k .. n_latent-1``                 latent
                           ``[B, n_latent - k, style_dim]``
``noise_i``, ``i >= k``    ``[B, 1, r_i, r_i]``                        noise
=========================  ==========================================  ======

The RGB ``skip`` is carried in the state so that ``G2(G1(v)) == G(v)`` at
every split, but it is a group of its own: ``free: [state]`` frees only
``h``, as in the paper, whose optimised intermediate variable is the
feature map. Freeing the skip with the feature map's l1 radius (hundreds to
thousands, over a few dozen to a few hundred RGB entries) would let the
optimiser paint a low-frequency image directly. Free it explicitly
(``free: [..., skip]``, ``radius: {skip: r}``) to experiment.

The split after the last layer is left out: no W+ row would remain and G2
would be the identity on the image. Every split therefore keeps at least two
W+ rows, so the geodesic (cross) loss on group ``latent`` is live in every
stage. For 1024x1024 (``L = 17``) the splits are ``0 .. 16``; the paper's
"layers" (resolution blocks) 0, 1, 2, 3 are splits 0, 1, 3, 5.

Latent spaces
-------------
``latent_space="w+"``: the ``latent`` entry is W+ itself. ``"gaussian_fit"``
(PULSE): the entry is a Gaussian-space proxy ``v`` per row, and
``w = leaky_relu(sigma * v + mu, 0.2)``, where ``mu, sigma`` are the mean and
std of ``leaky_relu(mapping(z), 5)`` (which undoes the mapping network's final
leaky ReLU) over ``gaussian_fit_samples`` random ``z``. Its rows live on the
sphere of radius ``sqrt(style_dim)``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.checkpoints import load_state_dict_strict
from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.modules.generators.latent import (
    LATENT_SPACES,
    check_wplus_state,
    from_gaussian_fit,
    gaussian_fit_of,
    mapped_mean,
)
from ilo_pl.modules.generators.stylegan2.checkpoint import PathLike, infer_architecture, read_checkpoint
from ilo_pl.modules.generators.stylegan2.layers import (
    MODCONV_IMPLS,
    ConstantInput,
    ModconvImplOption,
    EqualLinear,
    ModulatedConv2d,
    PixelNorm,
    StyledConv,
    ToRGB,
)
from ilo_pl.policy import check_impl

__all__ = ["LATENT_SPACES", "StyleGAN2Generator", "standard_channels"]


def standard_channels(channel_multiplier: int = 2) -> Dict[int, int]:
    """The standard channel table (resolution -> channels) of StyleGAN-2.

    512 channels up to 32x32, then ``256 * m`` at 64x64, halving per octave.
    """
    m = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * m, 128: 128 * m, 256: 64 * m, 512: 32 * m, 1024: 16 * m}



class StyleGAN2Generator(ModconvImplOption, SplitGenerator):
    """StyleGAN-2 generator with the reference port's layout, split at every conv layer.

    Build it from a checkpoint (architecture inferred from the tensors) or from
    an explicit architecture (random weights, for tests).

    Args:
        checkpoint: path of a checkpoint of the rosinality port (its ``g_ema``
            is loaded strictly); ``None`` keeps a random initialisation and
            then ``size``, ``style_dim`` and ``n_mlp`` are required.
        size: output resolution (a power of two >= 8). Inferred with a checkpoint.
        style_dim: latent width. Inferred with a checkpoint.
        n_mlp: number of mapping layers. Inferred with a checkpoint.
        channel_multiplier: of the standard channel table (config-f: 2).
        channels: an explicit channel table ``{resolution: channels}``
            (overrides ``channel_multiplier``). Inferred with a checkpoint.
        blur_kernel: FIR taps of the resampling filters.
        lr_mlp: learning-rate multiplier of the mapping network (0.01 in every
            public checkpoint; it scales the weights at run time and cannot be
            read off the tensors).
        latent_space: ``"w+"`` (the variable is W+) or ``"gaussian_fit"`` (the
            variable is PULSE's Gaussian-space proxy of W+).
        init_truncation: in ``"w+"`` mode, initial rows are
            ``w_avg + init_truncation * (mapping(z) - w_avg)`` with an
            independent ``z`` per row (1.0: plain samples; 0.0: all rows at the
            average latent). Unused in ``"gaussian_fit"`` mode, which starts
            from standard Gaussian rows (PULSE).
        mean_latent_samples: number of ``z`` whose mapped mean is the average
            latent ``w_avg``.
        gaussian_fit_samples: number of ``z`` for the Gaussian fit.
        stats_seed: seed of the ``z`` draws for ``w_avg`` and the Gaussian fit
            (deterministic statistics for a given checkpoint).
        modconv_impl: how the modulated convolutions run (every conv layer, the
            upsampling ones and ToRGB's): ``"fused"`` (per-sample modulated
            weights, one grouped convolution), ``"unfused"`` (scale the
            activations by the styles, one ordinary convolution with the shared
            weight, scale the output by the demodulation coefficients) or
            ``"auto"`` (default: per call, by batch size and device;
            :func:`~ilo_pl.modules.generators.stylegan2.layers.resolve_modconv_impl`).
            The forms are the same function up to float rounding, so the choice
            is not part of :meth:`render_settings`: it changes speed, not
            which image a state renders. Settable later (:attr:`modconv_impl`).

    Raises:
        FileNotFoundError: if ``checkpoint`` names a missing file.
        ValueError: on an unknown ``latent_space``, an architecture argument
            that contradicts the checkpoint, or a checkpoint whose keys or
            shapes do not match (missing, unexpected and mis-shaped keys named).
    """

    _modconv_layers = (ModulatedConv2d,)

    def __init__(
        self,
        checkpoint: Optional[PathLike] = None,
        size: Optional[int] = None,
        style_dim: Optional[int] = None,
        n_mlp: Optional[int] = None,
        channel_multiplier: int = 2,
        channels: Optional[Dict[int, int]] = None,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        latent_space: str = "w+",
        init_truncation: float = 0.7,
        mean_latent_samples: int = 4096,
        gaussian_fit_samples: int = 100_000,
        stats_seed: int = 0,
        modconv_impl: str = "auto",
    ) -> None:
        super().__init__()
        if latent_space not in LATENT_SPACES:
            raise ValueError(f"latent_space must be one of {LATENT_SPACES}; got {latent_space!r}")
        check_impl("StyleGAN2Generator(modconv_impl=...)", modconv_impl, MODCONV_IMPLS)
        sd = None
        if checkpoint is not None:
            sd = read_checkpoint(checkpoint)
            arch = infer_architecture(sd)
            given = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}
            for name, value in given.items():
                if value is None:
                    continue
                inferred = arch[name]
                if name == "channels":
                    value = {int(k): int(v) for k, v in value.items() if int(k) <= arch["size"]}
                if value != inferred:
                    raise ValueError(
                        f"{name}={value!r} contradicts checkpoint {checkpoint} ({name}={inferred!r}); "
                        f"leave {name} unset to use the checkpoint's"
                    )
            size, style_dim, n_mlp, channels = arch["size"], arch["style_dim"], arch["n_mlp"], arch["channels"]
        elif size is None or style_dim is None or n_mlp is None:
            raise ValueError(
                "StyleGAN2Generator needs a `checkpoint` path, or (for random weights) the architecture: "
                "size, style_dim and n_mlp"
            )
        log_size = int(round(math.log2(size))) if size > 0 else 0
        if size < 8 or 2**log_size != size:
            raise ValueError(f"size must be a power of two >= 8; got {size}")
        table = {int(k): int(v) for k, v in (channels or standard_channels(channel_multiplier)).items()}
        need = [2**i for i in range(2, log_size + 1)]
        lacking = [r for r in need if r not in table]
        if lacking:
            raise ValueError(f"the channel table lacks resolutions {lacking}; give channels for {need}")
        if init_truncation < 0:
            raise ValueError(f"init_truncation must be >= 0; got {init_truncation}")
        if mean_latent_samples < 1 or gaussian_fit_samples < 2:
            raise ValueError("mean_latent_samples must be >= 1 and gaussian_fit_samples >= 2")

        self.size, self.style_dim, self.n_mlp = int(size), int(style_dim), int(n_mlp)
        self.channels = {r: table[r] for r in need}
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.num_splits = self.num_layers - 1
        self.image_shape = (3, self.size, self.size)
        self.latent_space = latent_space
        self.init_truncation = float(init_truncation)
        self.mean_latent_samples = int(mean_latent_samples)
        self.gaussian_fit_samples = int(gaussian_fit_samples)
        self.stats_seed = int(stats_seed)
        blur_kernel = tuple(float(t) for t in blur_kernel)

        # Module names and order are the reference port's (state-dict compatibility).
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)],
        )
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for j in range(self.num_layers):
            r = self._noise_res(j)
            self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, r, r))
        in_ch = self.channels[4]
        for i in range(3, log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

        # Statistics of the mapping network, computed lazily (not in the state dict).
        self.register_buffer("w_avg", torch.zeros(1, style_dim), persistent=False)
        self.register_buffer("gaussian_fit_mean", torch.zeros(style_dim), persistent=False)
        self.register_buffer("gaussian_fit_std", torch.ones(style_dim), persistent=False)
        self._stats_ready: Dict[str, bool] = {"w_avg": False, "gaussian_fit": False}

        self.modconv_impl = modconv_impl
        if sd is not None:
            self.load_generator_state(sd, source=str(checkpoint))
        self.freeze()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_checkpoint(cls, path: PathLike, **kwargs: Any) -> "StyleGAN2Generator":
        """Build the generator of a checkpoint (path only; architecture inferred)."""
        return cls(checkpoint=path, **kwargs)

    @staticmethod
    def _noise_res(j: int) -> int:
        return 2 ** ((j + 5) // 2)

    def load_generator_state(self, sd: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load a ``g_ema`` state dict strictly, naming missing, unexpected and mis-shaped keys.

        Raises:
            ValueError: if the keys or shapes differ from this architecture's.
        """
        load_state_dict_strict(
            self,
            sd,
            f"{source} does not match a StyleGAN-2 generator of size {self.size}, style_dim "
            f"{self.style_dim}, n_mlp {self.n_mlp}, channels {self.channels}",
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # noqa: ANN201
        """``nn.Module.load_state_dict`` that also forgets cached mapping statistics."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._stats_ready = {"w_avg": False, "gaussian_fit": False}
        return result

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.input.input.device

    # ------------------------------------------------------------------ mapping statistics
    def _mapped_samples(self, n: int, chunk: int = 8192) -> Iterator[Tensor]:
        """``mapping(z)`` for ``n`` seeded z's, chunk by chunk (bounded memory)."""
        gen = torch.Generator().manual_seed(self.stats_seed)
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), self.style_dim, generator=gen)
            yield self.style(z.to(self.device, self.w_avg.dtype))

    @torch.no_grad()
    def average_latent(self) -> Tensor:
        """``w_avg`` ``[1, style_dim]``: mean of ``mapping(z)`` over ``mean_latent_samples`` seeded z's."""
        if not self._stats_ready["w_avg"]:
            mean = mapped_mean(self._mapped_samples(self.mean_latent_samples), self.mean_latent_samples,
                               self.style_dim, self.w_avg.device)
            self.w_avg.copy_(mean[None])
            self._stats_ready["w_avg"] = True
        return self.w_avg

    @torch.no_grad()
    def gaussian_fit(self) -> Tuple[Tensor, Tensor]:
        """PULSE's Gaussian fit ``(mu, sigma)`` of ``leaky_relu(mapping(z), 5)``, each ``[style_dim]``."""
        if not self._stats_ready["gaussian_fit"]:
            mean, std = gaussian_fit_of(self._mapped_samples(self.gaussian_fit_samples), self.gaussian_fit_samples,
                                        self.style_dim, self.gaussian_fit_mean.device)
            self.gaussian_fit_mean.copy_(mean)
            self.gaussian_fit_std.copy_(std)
            self._stats_ready["gaussian_fit"] = True
        return self.gaussian_fit_mean, self.gaussian_fit_std

    def latent_to_w(self, latent: Tensor) -> Tensor:
        """Map the ``latent`` state entry (any number of rows) to W+ rows."""
        if self.latent_space == "w+":
            return latent
        return from_gaussian_fit(latent, *self.gaussian_fit())

    # ------------------------------------------------------------------ layer bookkeeping
    def _conv(self, j: int) -> StyledConv:
        return self.conv1 if j == 0 else self.convs[j - 1]

    def _to_rgb_after(self, j: int) -> Optional[ToRGB]:
        if j == 0:
            return self.to_rgb1
        return self.to_rgbs[j // 2 - 1] if j % 2 == 0 else None

    def _run(
        self,
        w: Tensor,
        noises: Sequence[Optional[Tensor]],
        h: Optional[Tensor],
        skip: Optional[Tensor],
        start: int,
        stop: int,
    ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Run conv layers ``start .. stop-1`` (W+ rows of ``w`` start at row ``start``)."""
        for j in range(start, stop):
            if j == 0:
                h = self.input(w.shape[0])
            h = self._conv(j)(h, w[:, j - start], noise=noises[j])
            rgb = self._to_rgb_after(j)
            if rgb is not None:
                skip = rgb(h, w[:, j + 1 - start], skip)
        return h, skip

    def state_names(self, split: int) -> List[str]:
        """The entry names of the state at ``split``, in order."""
        self.check_split(split)
        names = ["h", "skip"] if split > 0 else []
        return names + ["latent"] + [f"noise_{i}" for i in range(split, self.num_layers)]

    def _check_state(self, state: Mapping[str, Tensor], split: int) -> None:
        check_wplus_state(state, split, self.state_names(split), self.n_latent - split, self.style_dim)

    # ------------------------------------------------------------------ SplitGenerator protocol
    @torch.no_grad()
    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        """Initial latents and noises for ``batch_size`` problems.

        ``"w+"``: every row is ``w_avg + init_truncation * (mapping(z) - w_avg)``
        with its own ``z``; ``"gaussian_fit"``: standard Gaussian rows (the
        proxy's prior). Noises are ``N(0, 1)`` per sample. Draws use
        ``generator`` (CPU) and are moved to the weights' device.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        dev = self.device
        z = torch.randn(batch_size, self.n_latent, self.style_dim, generator=generator)
        if self.latent_space == "w+":
            avg = self.average_latent()
            w = self.style(z.reshape(-1, self.style_dim).to(dev, avg.dtype)).reshape(z.shape)
            latent = avg + self.init_truncation * (w - avg)
        else:
            latent = z.to(dev, self.w_avg.dtype)
        state: State = {"latent": latent}
        for j in range(self.num_layers):
            r = self._noise_res(j)
            state[f"noise_{j}"] = torch.randn(batch_size, 1, r, r, generator=generator).to(dev, latent.dtype)
        return state

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        """``G1``: the state at split ``stop`` from the state at ``start``."""
        self._check_state(state, start)
        self.check_advance(start, stop)
        out: State = {}
        if stop > start:
            noises = [state.get(f"noise_{j}") for j in range(self.num_layers)]
            h, skip = self._run(
                self.latent_to_w(state["latent"]), noises, state.get("h"), state.get("skip"), start, stop
            )
            out["h"], out["skip"] = h, skip
        elif start > 0:
            out["h"], out["skip"] = state["h"], state["skip"]
        out["latent"] = state["latent"][:, stop - start :]
        for j in range(stop, self.num_layers):
            out[f"noise_{j}"] = state[f"noise_{j}"]
        return out

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        """``G2``: the image ``[B, 3, size, size]`` from the state at ``split``."""
        self._check_state(state, split)
        noises = [state.get(f"noise_{j}") for j in range(self.num_layers)]
        _, skip = self._run(
            self.latent_to_w(state["latent"]), noises, state.get("h"), state.get("skip"), split, self.num_layers
        )
        return skip

    def groups(self, split: int) -> Dict[str, str]:
        """``h`` -> ``state``, ``skip`` -> ``skip``, ``latent`` -> ``latent``, ``noise_i`` -> ``noise``."""
        # The skip has its own group: a stage freeing "state" (the feature map) keeps it fixed.
        special = {"h": "state", "skip": "skip", "latent": "latent"}
        return {n: special.get(n, "noise") for n in self.state_names(split)}

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        """The noises (norm over ``(1, 2, 3)``) and, in ``"gaussian_fit"`` mode, each latent row (``(2,)``)."""
        out: Dict[str, Tuple[int, ...]] = {f"noise_{j}": (1, 2, 3) for j in range(split, self.num_layers)}
        self.check_split(split)
        if self.latent_space == "gaussian_fit":
            out["latent"] = (2,)
        return out

    # ------------------------------------------------------------------ reference-port API
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``G(state)`` (a state dict at split 0 -> image) or the port's call ``G(styles, ...)``.

        With a mapping as the first argument this is the
        :class:`~ilo_pl.modules.generators.base.SplitGenerator` forward
        (``render(state, 0)``); otherwise it is :meth:`synthesize`, which
        returns ``(image, latents or None)`` like the reference port.
        """
        if args and isinstance(args[0], Mapping):
            return self.render(args[0], 0)
        return self.synthesize(*args, **kwargs)

    def get_latent(self, z: Tensor) -> Tensor:
        """The mapping network: ``w = mapping(z)``."""
        return self.style(z)

    def make_noise(self) -> List[Tensor]:
        """Fresh ``N(0, 1)`` noise maps ``[1, 1, r, r]``, one per conv layer (port API)."""
        return [torch.randn(1, 1, self._noise_res(j), self._noise_res(j), device=self.device) for j in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n_latent: int) -> Tensor:
        """Mean of ``mapping(z)`` over ``n_latent`` fresh random z's, ``[1, style_dim]`` (port API)."""
        z = torch.randn(n_latent, self.style_dim, device=self.device)
        return self.style(z).mean(0, keepdim=True)

    def synthesize(
        self,
        styles: Sequence[Tensor],
        return_latents: bool = False,
        inject_index: Optional[int] = None,
        truncation: float = 1.0,
        truncation_latent: Optional[Tensor] = None,
        input_is_latent: bool = False,
        noise: Optional[Sequence[Optional[Tensor]]] = None,
        randomize_noise: bool = True,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Generate images with the reference port's call signature.

        Args:
            styles: list of one or two ``z`` (or ``w`` if ``input_is_latent``)
                ``[B, style_dim]``, or one W+ tensor ``[B, n_latent, style_dim]``.
            return_latents: also return the W+ latents used.
            inject_index: with two styles, rows ``< inject_index`` use the
                first (random in ``1..n_latent-1`` if ``None``, as the port).
            truncation: ``w <- t_latent + truncation * (w - t_latent)`` if < 1.
            truncation_latent: the centre of truncation (e.g. ``mean_latent(4096)``).
            input_is_latent: ``styles`` are already in W.
            noise: one map per conv layer (``None`` entries draw fresh noise).
            randomize_noise: with ``noise=None``: fresh noise if True, else the
                stored ``noises.noise_i`` buffers.

        Returns:
            ``(image [B, 3, size, size], W+ latents or None)``.
        """
        if isinstance(styles, Tensor):
            raise TypeError("styles must be a list of tensors, e.g. g([z]); got a bare tensor")
        styles = list(styles)
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"styles must hold one or two tensors; got {len(styles)}")
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else [getattr(self.noises, f"noise_{j}") for j in range(self.num_layers)]
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} maps (one per conv layer); got {len(noise)}")
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. g.mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) == 1:
            s = styles[0]
            latent = s if s.dim() == 3 else s.unsqueeze(1).expand(-1, self.n_latent, -1)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            if not 0 <= inject_index <= self.n_latent:
                raise ValueError(f"inject_index must be in 0..{self.n_latent}; got {inject_index}")
            latent = torch.cat(
                [
                    styles[0].unsqueeze(1).expand(-1, inject_index, -1),
                    styles[1].unsqueeze(1).expand(-1, self.n_latent - inject_index, -1),
                ],
                1,
            )
        if latent.shape[1] != self.n_latent:
            raise ValueError(f"W+ latents must have {self.n_latent} rows; got {tuple(latent.shape)}")
        _, image = self._run(latent, list(noise), None, None, 0, self.num_layers)
        return image, (latent if return_latents else None)

    # ------------------------------------------------------------------ identity
    def render_settings(self) -> Dict[str, object]:
        """``latent_space``; in ``"gaussian_fit"`` mode also the fit's inputs.

        The Gaussian fit (``gaussian_fit_samples`` draws seeded with
        ``stats_seed`` through the mapping network, whose run-time scale is
        ``lr_mlp``) maps the ``latent`` entry to W+, so each changes the
        rendered image. ``init_truncation`` and ``mean_latent_samples`` only
        move the starting point of a solve, never how a saved state renders.
        """
        out: Dict[str, object] = {"latent_space": self.latent_space}
        if self.latent_space == "gaussian_fit":
            out.update(
                gaussian_fit_samples=self.gaussian_fit_samples,
                stats_seed=self.stats_seed,
                lr_mlp=float(self.style[1].lr_mul) if len(self.style) > 1 else 1.0,
            )
        return out


# The public path, not this file's: ``identity()`` records ``__module__`` and refuses to render a
# solution saved under another class name, so solutions saved before the split still render, and
# configs, pickles and ``--print_config`` keep naming ``ilo_pl.modules.generators.stylegan2``.
StyleGAN2Generator.__module__ = "ilo_pl.modules.generators.stylegan2"
