"""Saved solutions: the variables that regenerate a reconstruction exactly.

A solution file (``<id>_solution.pt``, written by
:class:`~ilo_pl.callbacks.ResultWriter`) holds plain tensors and strings only,
so it loads with ``torch.load(..., weights_only=True)``:

``{"format": "ilo-pl-solution/1", "split": int, "stage": int,
"state": {name: tensor [1, ...]}, "generator": {...identity...},
"image": tensor [1, C, H, W]}``

:func:`regenerate` renders ``state`` at ``split`` with the given generator
and checks that the generator is the one that produced the solution.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import Tensor

from ilo_pl.io import atomic_write_bytes
from ilo_pl.problem import Solution

FORMAT = "ilo-pl-solution/1"


def save_solution(path: Union[str, Path], solution: Solution, generator, image: Tensor) -> None:  # noqa: ANN001
    """Write ``solution`` (and the image it renders to) atomically to ``path``."""
    payload = {
        "format": FORMAT,
        "split": int(solution.split),
        "stage": int(solution.stage),
        "state": {k: v.detach().cpu().float().contiguous() for k, v in solution.state.items()},
        "generator": {k: str(v) for k, v in generator.identity().items()},
        "image": image.detach().cpu().float()[None] if image.dim() == 3 else image.detach().cpu().float(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_solution(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a solution file (``weights_only=True``).

    Raises:
        FileNotFoundError: if it does not exist.
        ValueError: if it is not an ilo-pl solution.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"solution file {path} does not exist")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ilo-pl solution file (format {FORMAT})")
    return data


@torch.no_grad()
def regenerate(path_or_solution: Union[str, Path, Dict[str, Any]], generator, check_identity: bool = True) -> Tensor:  # noqa: ANN001
    """Render a saved solution with ``generator``: ``[1, C, H, W]`` in ``[-1, 1]``.

    Args:
        path_or_solution: a solution file or its loaded dict.
        generator: the generator that produced it.
        check_identity: refuse a generator whose class or weights differ.

    Raises:
        ValueError: if the generator is not the one the solution was made with.
    """
    sol = load_solution(path_or_solution) if not isinstance(path_or_solution, dict) else path_or_solution
    if check_identity:
        want = sol["generator"]
        have = {k: str(v) for k, v in generator.identity().items()}
        if want != have:
            raise ValueError(
                f"this solution was made with generator {want}, not {have}; load that generator "
                "(or pass check_identity=False to render anyway)"
            )
    device = next(generator.buffers(), next(generator.parameters(), torch.zeros(0))).device
    state = {k: v.to(device) for k, v in sol["state"].items()}
    return generator.render(state, int(sol["split"])).float().cpu()
