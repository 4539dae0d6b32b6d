"""Reading checkpoint files safely, and strict state-dict loading with errors that name what does not fit.

Two checks every loader (DCGAN, StyleGAN-2, classifiers, LPIPS, solutions) needs:

* :func:`load_checkpoint` is the one way ilo-pl reads a ``.pt`` file: a
  weights-only ``torch.load`` (tensors and plain data; no code from the file
  ever runs), and a file that is not a checkpoint (random bytes, a truncated
  or empty file, another format) fails with a :class:`CheckpointError` that
  names the file and what was expected, instead of PyTorch's raw
  ``UnpicklingError`` (whose advice, to load with ``weights_only=False``,
  would run arbitrary code from a file that is not what it claims to be).
* :func:`load_state_dict_strict`: a checkpoint of another architecture fails
  with the missing, unexpected and mis-shaped keys named, instead of
  PyTorch's raw error or a silent partial load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint of the kind expected.

    Attributes:
        path: the file.
        refused: the refused Python object (torch's "Unsupported global" line)
            when the file is a real pickle that holds Python objects a
            weights-only load does not rebuild; ``None`` when the file is not a
            PyTorch file at all (corrupt, truncated, empty, another format).
    """

    def __init__(self, message: str, path: Path, refused: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.refused = refused


def _refused_global(err: BaseException) -> Optional[str]:
    """torch's "Unsupported global: ..." line of a weights-only refusal, or ``None`` (a file that is no pickle)."""
    for line in str(err).splitlines():
        if "Unsupported global" in line:
            return line.strip()
    return None


def _detail(err: BaseException) -> str:
    """A short, safe description of why torch could not read a file (never torch's advice to unpickle)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not first or "weights_only" in first:
        return type(err).__name__
    first = first.split(". ")[0]  # torch's zip errors go on about how files get corrupted
    return f"{type(err).__name__}: {first[:160]}"


def load_checkpoint(
    path: Union[str, Path], what: str, *, safe_globals: Iterable[Any] = (), hint: str = ""
) -> Any:
    """Read ``path`` with ``torch.load(map_location="cpu", weights_only=True)``, with errors that name it.

    Args:
        path: the file.
        what: what the file should be, for messages (``"DCGAN checkpoint"``).
        safe_globals: classes the weights-only unpickler may rebuild besides
            tensors and plain data (e.g. ``argparse.Namespace``).
        hint: appended to the message of a file that holds refused Python
            objects (how to re-save it with tensors only).

    Returns:
        Whatever the file holds (dicts of tensors, numbers, strings, ...).

    Raises:
        FileNotFoundError: ``"<what> <path> does not exist"``.
        CheckpointError: a ``ValueError`` ``"<path> is not a valid <what>: ..."``
            for a file that is not a PyTorch file (corrupt, truncated, empty,
            random bytes, another format) or that holds Python objects a
            weights-only load refuses. It never advises ``weights_only=False``.

    Example:
        >>> import tempfile, os
        >>> fd, name = tempfile.mkstemp(suffix=".pt"); _ = os.write(fd, b"not a checkpoint"); os.close(fd)
        >>> try:
        ...     load_checkpoint(name, "DCGAN checkpoint")
        ... except CheckpointError as err:
        ...     message = str(err)
        >>> message.startswith(f"{name} is not a valid DCGAN checkpoint: it is not a PyTorch checkpoint file")
        True
        >>> "weights_only" in message
        False
        >>> os.remove(name)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise  # the OS's message names the file and the real problem
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file; all mean "not a checkpoint"
        refused = _refused_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if refused is not None:
            raise CheckpointError(
                f"{path} is not a valid {what}: it holds Python objects that ilo-pl does not load ({refused}); "
                "ilo-pl reads only tensors and plain data from checkpoint files (a weights-only load), so "
                f"that no code from a file ever runs{hint}",
                path,
                refused,
            ) from None
        if path.stat().st_size == 0:
            why = "the file is empty"
        else:
            why = f"it is not a PyTorch checkpoint file (it is truncated, corrupt or another kind of file: {_detail(err)})"
        # `from None`: torch's own message advises weights_only=False, which must not be followed here.
        raise CheckpointError(f"{path} is not a valid {what}: {why}", path) from None


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
