"""Reading StyleGAN-2 checkpoints of the reference port (rosinality's ``g_ema``).

:func:`read_checkpoint` loads the file safely (``weights_only=True``) and
returns the generator's state dict; :func:`infer_architecture` reads ``size``,
``style_dim``, ``n_mlp`` and the channel table off its tensors. Errors name the
missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Union

import torch
from torch import Tensor

from ilo_pl.checkpoints import load_checkpoint

__all__ = ["PathLike", "infer_architecture", "read_checkpoint"]

PathLike = Union[str, Path]


def _format_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def read_checkpoint(path: PathLike) -> Dict[str, Tensor]:
    """Read the ``g_ema`` state dict of a checkpoint of the reference port.

    Reads with ``torch.load(..., weights_only=True)``; an ``argparse.Namespace``
    (the training script's ``args``) is allowed as a plain-data object. Other
    top-level entries (``g``, ``d``, optimisers, ``latent_avg``) are ignored.
    A file that holds a bare state dict (every value a tensor) is accepted too.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a checkpoint with a ``g_ema`` state dict
            (:class:`~ilo_pl.checkpoints.CheckpointError` for a file that is
            no PyTorch checkpoint at all or holds refused objects).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {path.absolute().parent})"
        raise FileNotFoundError(
            f"StyleGAN-2 checkpoint {path} does not exist{where}; download stylegan2-ffhq-config-f.pt "
            "(see docs/stylegan2.md) and pass its path as `checkpoint` "
            "(CLI: --model.generator.init_args.checkpoint=/path/to/ckpt.pt)"
        )
    ckpt = load_checkpoint(
        path, "StyleGAN-2 checkpoint", safe_globals=[argparse.Namespace],
        hint="; re-save just the generator: torch.save({'g_ema': ckpt['g_ema']}, 'g_ema.pt')",
    )
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} is not a StyleGAN-2 checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    if "g_ema" in ckpt:
        sd = ckpt["g_ema"]
    elif ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        sd = ckpt
    else:
        raise ValueError(
            f"{path} has no 'g_ema' entry (top-level keys: {_format_keys(sorted(map(str, ckpt)))}); "
            "expected a checkpoint of the rosinality StyleGAN-2 port with the generator under 'g_ema'"
        )
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: 'g_ema' is not a state dict of tensors")
    return dict(sd)


def _indexed(sd: Mapping[str, Tensor], pattern: str) -> Dict[int, str]:
    rx = re.compile(pattern)
    out = {}
    for key in sd:
        m = rx.fullmatch(key)
        if m:
            out[int(m.group(1))] = key
    return out


def infer_architecture(sd: Mapping[str, Tensor]) -> Dict[str, Any]:
    """Infer ``size``, ``style_dim``, ``n_mlp`` and the channel table from a ``g_ema`` state dict.

    Raises:
        ValueError: naming the keys that are missing or mis-shaped when the
            architecture cannot be read off the tensors.
    """
    needed = ["input.input", "conv1.conv.weight", "conv1.conv.modulation.weight"]
    missing = [k for k in needed if k not in sd]
    mlp = _indexed(sd, r"style\.(\d+)\.weight")
    if not mlp:
        missing.append("style.1.weight")
    if missing:
        unexpected = [k for k in sd if not re.match(r"(style|input|conv1|to_rgb1|convs|to_rgbs|noises)\.", k)]
        detail = f"missing keys {_format_keys(missing)}"
        if unexpected:
            detail += f"; unexpected keys {_format_keys(sorted(unexpected))}"
        raise ValueError(f"not a StyleGAN-2 generator state dict (rosinality layout): {detail}")
    inp = sd["input.input"]
    if inp.dim() != 4:
        raise ValueError(f"mis-shaped key input.input {tuple(inp.shape)}: expected [1, C, 4, 4]")
    mod = sd["conv1.conv.modulation.weight"]
    if mod.dim() != 2:
        raise ValueError(f"mis-shaped key conv1.conv.modulation.weight {tuple(mod.shape)}: expected [C, style_dim]")
    style_dim = int(mod.shape[1])
    n_mlp = max(mlp)
    gaps = [f"style.{i}.weight" for i in range(1, n_mlp + 1) if i not in mlp]
    if gaps:
        raise ValueError(f"not a StyleGAN-2 generator state dict: missing keys {_format_keys(gaps)}")
    idx = set(_indexed(sd, r"convs\.(\d+)\..*")) | {2 * i for i in _indexed(sd, r"to_rgbs\.(\d+)\..*")}
    n_blocks = max(idx) // 2 + 1 if idx else 0
    channels = {4: int(inp.shape[1])}
    for m in range(n_blocks):
        res = 2 ** (m + 3)
        probes = [
            (f"convs.{2 * m}.conv.weight", 1),
            (f"convs.{2 * m + 1}.conv.weight", 2),
            (f"convs.{2 * m}.activate.bias", 0),
            (f"to_rgbs.{m}.conv.weight", 2),
        ]
        for key, dim in probes:
            t = sd.get(key)
            if t is not None and t.dim() > dim:
                channels[res] = int(t.shape[dim])
                break
        else:
            raise ValueError(
                f"cannot read the channel count at {res}x{res}: missing keys "
                f"{_format_keys([p[0] for p in probes])}"
            )
    return {"size": 4 * 2**n_blocks, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}
