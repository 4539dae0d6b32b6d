"""Strict state-dict loading with errors that name what does not fit.

One place for the check every loader (DCGAN, StyleGAN-2, classifiers) needs:
a checkpoint of another architecture fails with the missing, unexpected and
mis-shaped keys named, instead of PyTorch's raw error or a silent partial load.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from torch import Tensor, nn


def _keys(keys: Sequence[str], limit: int = 5) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return repr(list(keys[:limit]))[:-1] + "]" + more


def describe_mismatch(own: Mapping[str, Tensor], sd: Mapping[str, Tensor]) -> Optional[str]:
    """``None`` if ``sd`` has exactly ``own``'s keys and shapes, else a description of the differences."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(getattr(sd[k], "shape", ())))
    if not (missing or unexpected or bad):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys {_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_keys(unexpected)}")
    if bad:
        parts.append(
            "mis-shaped keys "
            + ", ".join(f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in bad[:5])
            + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
        )
    return "; ".join(parts)


def load_state_dict_strict(module: nn.Module, sd: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(sd, strict=True)``, or a ``ValueError`` starting with ``what``.

    Raises:
        ValueError: ``"<what>: missing keys [...]; unexpected keys [...]; mis-shaped keys ..."``.
    """
    problem = describe_mismatch(module.state_dict(), sd)
    if problem:
        raise ValueError(f"{what}: {problem}")
    module.load_state_dict(sd, strict=True)
