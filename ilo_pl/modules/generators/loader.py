"""One entry point for every generator checkpoint: :func:`load_generator` (and its config form :func:`pretrained_generator`).

The format is told from the file itself, never from its name:

* a ``torch.save`` file (a zip archive, or the legacy stream that starts with
  torch's magic number): the rosinality port's checkpoint ->
  :class:`~ilo_pl.modules.generators.stylegan2.StyleGAN2Generator` (read with
  a weights-only load);
* any other pickle stream: an NVIDIA network pickle, read with the restricted
  unpickler (:func:`~ilo_pl.modules.generators.nvlabs.read_network_pickle`,
  nothing from the file is run); its ``G_ema`` is StyleGAN-2 (ADA / stylegan3
  repository) -> :class:`~ilo_pl.modules.generators.nvlabs.StyleGAN2ADAGenerator`,
  or StyleGAN3 (T/R) -> :class:`~ilo_pl.modules.generators.nvlabs.StyleGAN3Generator`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from ilo_pl.modules.generators.base import SplitGenerator

__all__ = ["checkpoint_format", "load_generator", "pretrained_generator"]

PathLike = Union[str, "os.PathLike[str]"]

#: The first bytes of a legacy (non-zip) ``torch.save`` file: protocol 2, then the magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def checkpoint_format(path: PathLike) -> str:
    """``"torch"`` (a ``torch.save`` file) or ``"nvlabs"`` (an NVIDIA network pickle), from the file's first bytes.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is neither.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"generator checkpoint {p} does not exist")
    with open(p, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    if head.startswith(b"PK\x03\x04") or head == _TORCH_LEGACY_MAGIC:
        return "torch"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "nvlabs"
    raise ValueError(
        f"{p} is neither a torch.save checkpoint (rosinality StyleGAN-2 .pt) nor a pickle "
        "(NVIDIA StyleGAN2-ADA/StyleGAN3 .pkl)"
    )


def load_generator(path: PathLike, **options: Any) -> SplitGenerator:
    """The :class:`~ilo_pl.modules.generators.base.SplitGenerator` of a checkpoint, from its path alone.

    Args:
        path: a rosinality StyleGAN-2 ``.pt`` or an NVIDIA ``.pkl`` snapshot.
        **options: passed to the generator's constructor (e.g. ``latent_space``,
            ``init_truncation``, ``modconv_impl``; NVIDIA: ``noise_mode``,
            ``class_label``); options left at ``None`` are dropped.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on an unknown format (``NetworkPickleError`` for a refused pickle).
    """
    options = {k: v for k, v in options.items() if v is not None}
    kind = checkpoint_format(path)
    if kind == "torch":
        from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

        return StyleGAN2Generator(checkpoint=path, **options)
    from ilo_pl.modules.generators.nvlabs import read_network_pickle, take_generator
    from ilo_pl.modules.generators.nvlabs.stylegan2ada import StyleGAN2ADAGenerator
    from ilo_pl.modules.generators.nvlabs.stylegan3 import StyleGAN3Generator, is_stylegan3_record

    network = options.pop("network", "G_ema")
    snapshot = read_network_pickle(path)
    record = take_generator(snapshot, network, path)
    if is_stylegan3_record(record):
        return StyleGAN3Generator(checkpoint=path, network=network, _snapshot=snapshot, **options)
    return StyleGAN2ADAGenerator(checkpoint=path, network=network, _snapshot=snapshot, **options)


def pretrained_generator(
    checkpoint: PathLike,
    latent_space: Optional[str] = None,
    init_truncation: Optional[float] = None,
    gaussian_fit_samples: Optional[int] = None,
    mean_latent_samples: Optional[int] = None,
    stats_seed: Optional[int] = None,
    modconv_impl: Optional[str] = None,
    noise_mode: Optional[str] = None,
    class_label: Optional[int] = None,
) -> SplitGenerator:
    """Config form of :func:`load_generator`: the generator of any supported checkpoint.

    A config names this function where it would name a generator class; the
    checkpoint path is its only required argument::

        generator:
          class_path: ilo_pl.modules.generators.pretrained_generator
          init_args: {checkpoint: stylegan2-ffhq-1024x1024.pkl, latent_space: gaussian_fit}

    Options left at ``None`` take the generator's own default. (The options are
    spelled out, unlike :func:`load_generator`'s ``**options``, so that configs
    and ``ilo-pl fit --help`` know them and refuse misspellings.)

    Args:
        checkpoint: the checkpoint path.
        latent_space: ``"w+"`` or ``"gaussian_fit"``.
        init_truncation: truncation of the initial W+ rows.
        gaussian_fit_samples: draws of the Gaussian fit.
        mean_latent_samples: draws of ``w_avg`` (where the checkpoint has none).
        stats_seed: seed of those draws.
        modconv_impl: ``"auto"``, ``"fused"`` or ``"unfused"``.
        noise_mode: NVIDIA only: ``"random"``, ``"const"`` or ``"none"``.
        class_label: NVIDIA conditional snapshots only: the default class of every
            problem (problems take their own from the data's ``class_labels``).

    Returns:
        What :func:`load_generator` returns for ``checkpoint``.
    """
    return load_generator(
        checkpoint, latent_space=latent_space, init_truncation=init_truncation,
        gaussian_fit_samples=gaussian_fit_samples, mean_latent_samples=mean_latent_samples,
        stats_seed=stats_seed, modconv_impl=modconv_impl, noise_mode=noise_mode, class_label=class_label,
    )
