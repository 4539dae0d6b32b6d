"""Saved solutions: the variables that regenerate a reconstruction (exactly for float32 runs on the CPU).

A solution file (``<id>_solution.pt``, written by
:class:`~ilo_pl.callbacks.ResultWriter`) holds plain tensors, numbers and
strings only, so it loads with ``torch.load(..., weights_only=True)``:

``{"format": "ilo-pl-solution/1", "split": int, "stage": int,
"state": {name: tensor [1, ...]}, "generator": {...identity...},
"image": tensor [1, C, H, W], "index": int or None, "row": {...} or None,
"restart": int, "averaged": [int, ...]}``

``index`` is the problem's index in its data set and ``row`` its
``results.csv`` row, so a resumed run can rebuild a CSV that fell behind
(see :mod:`ilo_pl.resume`). ``restart`` is the problem's restart the state
belongs to (:mod:`ilo_pl.modules.restarts`; absent from files written before it),
``averaged`` the restarts whose mean the image is (``restart_average``; empty
when it is one restart's own image, absent from files written before it).

A solve with a consistency step (``consistency: project | prox``,
:mod:`ilo_pl.operators.consistency`) or a mean over restarts
(``restart_average``) saves an image that is *not* in the
generator's range: ``image = clamp(render(state, split) + correction, -1, 1)``. Its file
has the format ``"ilo-pl-solution/2"`` (an older ilo-pl refuses it rather
than regenerate the image without the step) and a ``"consistency"`` entry
``{"mode": str, "correction": tensor [1, C, H, W], "note": str}`` (``mode``:
the consistency step, ``"none"`` for a mean alone); the note
says so in the file itself.

:func:`regenerate` renders ``state`` at ``split`` with the given generator
and checks that the generator is the one that produced the solution (class,
weights and render settings, :func:`check_generator_identity`);
:func:`load_generator` rebuilds that generator from a run's ``config.yaml``
and :func:`regenerate_file` does both and writes the PNG (the
``ilo-pl regenerate`` command).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from ilo_pl.checkpoints import load_checkpoint
from ilo_pl.io import atomic_write_bytes
from ilo_pl.problem import Solution

FORMAT = "ilo-pl-solution/1"
#: The format of a solution whose image includes a correction on top of the rendering (a consistency
#: step, a mean over restarts).
FORMAT_CORRECTED = "ilo-pl-solution/2"
FORMATS = (FORMAT, FORMAT_CORRECTED)

#: What a corrected solution file says about its image.
CORRECTION_NOTE = (
    "image = clamp(render(state, split) + correction, -1, 1): the saved reconstruction includes {what}, so it "
    "is not in the generator's range; ilo_pl.solutions.regenerate adds the correction and clamps"
)


def correction_note(solution: Solution) -> str:
    """What a corrected solution's image includes, in words (its file's ``consistency["note"]``)."""
    what = []
    if solution.averaged:
        what.append(f"the mean of restarts {', '.join(str(r) for r in solution.averaged)} (restart_average)")
    if solution.consistency != "none":
        what.append(f"the final consistency step ({solution.consistency})")
    return CORRECTION_NOTE.format(what=" and then ".join(what) or "a correction")

PathLike = Union[str, Path]


def save_solution(
    path: PathLike,
    solution: Solution,
    generator,  # noqa: ANN001 - a SplitGenerator
    image: Tensor,
    index: Optional[int] = None,
    row: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write ``solution`` (and the image it renders to) atomically to ``path``.

    Args:
        path: the ``.pt`` file.
        solution: the variables (one sample).
        generator: the generator that renders them (its identity is stored).
        image: the reconstruction ``[C, H, W]`` or ``[1, C, H, W]``.
        index: the problem's index in its data set (for resuming).
        row: the problem's ``results.csv`` row (numbers and strings only).
    """
    payload = {
        "format": FORMAT if solution.correction is None else FORMAT_CORRECTED,
        "split": int(solution.split),
        "stage": int(solution.stage),
        "state": {k: v.detach().cpu().float().contiguous() for k, v in solution.state.items()},
        "generator": {k: str(v) for k, v in generator.identity().items()},
        "image": image.detach().cpu().float()[None] if image.dim() == 3 else image.detach().cpu().float(),
        "index": None if index is None else int(index),
        "row": None if row is None else {str(k): _plain(v) for k, v in row.items()},
        "restart": int(solution.restart),
        "averaged": [int(r) for r in solution.averaged],
    }
    if solution.correction is not None:
        payload["consistency"] = {
            "mode": str(solution.consistency),
            "correction": solution.correction.detach().cpu().float().contiguous(),
            "note": correction_note(solution),
        }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _plain(value: Any) -> Union[str, int, float]:
    """A CSV cell as a type ``weights_only`` loading accepts."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return ""
    return str(value)


def load_solution(path: PathLike) -> Dict[str, Any]:
    """Read a solution file (through :func:`ilo_pl.checkpoints.load_checkpoint`: weights-only).

    Raises:
        FileNotFoundError: if it does not exist.
        ValueError: if it is not an ilo-pl solution: a
            :class:`~ilo_pl.checkpoints.CheckpointError` (naming the file) for
            a truncated, corrupt or foreign file, else one saying so.
    """
    data = load_checkpoint(path, "ilo-pl solution file")
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        raise ValueError(f"{path} is not an ilo-pl solution file (format {' or '.join(FORMATS)})")
    return data


def check_generator_identity(saved: Mapping[str, str], generator) -> None:  # noqa: ANN001
    """Refuse to render a solution with a generator other than the one that made it.

    Compares class, weights digest and render settings (``setting.*``, e.g.
    StyleGAN-2's ``latent_space``); see
    :meth:`~ilo_pl.modules.generators.base.SplitGenerator.identity`.

    Raises:
        ValueError: naming each entry that differs, with the fix.
    """
    have = {k: str(v) for k, v in generator.identity().items()}
    want = {str(k): str(v) for k, v in saved.items()}
    # Solutions written before render settings were recorded lack "setting.*": those cannot be checked.
    unknown = sorted(k for k in have if k.startswith("setting.") and k not in want)
    diff = sorted(k for k in set(want) | set(have) if k not in unknown and want.get(k) != have.get(k))
    if diff:
        shown = "; ".join(f"{k}: saved {want.get(k, '(none)')!r}, this generator {have.get(k, '(none)')!r}" for k in diff)
        raise ValueError(
            f"this solution was made with another generator ({shown}); build the generator the run used "
            "(its config.yaml's model.generator, e.g. ilo_pl.solutions.load_generator), or pass "
            "check_identity=False (--no_check_identity) to render anyway"
        )
    if unknown:
        warnings.warn(
            f"this solution predates recorded generator settings; {', '.join(unknown)} cannot be checked "
            "(render with the run's own config.yaml)",
            stacklevel=4,  # the caller of regenerate (through torch.no_grad's wrapper)
        )


@torch.no_grad()
def regenerate(path_or_solution: Union[PathLike, Dict[str, Any]], generator, check_identity: bool = True) -> Tensor:  # noqa: ANN001
    """Render a saved solution with ``generator``: ``[1, C, H, W]``, the image the run returned.

    That is the generator's rendering as it is (its own range, nominally
    ``[-1, 1]``; not clamped, as the run's result was not: the PNG and the
    image metrics clamp it). A solution with a correction (format
    ``ilo-pl-solution/2``: a consistency step, a mean over restarts) renders
    ``state``, adds the correction and clamps the sum to ``[-1, 1]`` (in
    float32 on the CPU, as the run did), so the image includes them and is in
    ``[-1, 1]``.

    Renders in the generator's dtype (float32) without autocast, on the
    generator's device. How close that is to the saved image depends on how
    the run rendered it:

    * a float32 run (``precision`` ``32-true``, the default) on the CPU,
      regenerated on the CPU: equal to within 1e-6, in practice bit for bit
      (so its PNG is byte-identical);
    * a float32 run on a GPU: cuDNN convolutions use TF32 by default
      (``torch.backends.cudnn.allow_tf32``), so the saved image differs from
      a CPU rendering (the default here) by about 1e-3; rendering on the run's
      GPU model (``device="cuda"`` in :func:`regenerate_file`) agrees to about
      1e-4 (the GPU tests' tolerance);
    * a ``bf16-mixed``/``16-mixed`` run rendered every scored iterate, a
      stage's final one included, in the steps' precision (under autocast,
      with reduced-precision convolutions and matrix products): the
      regenerated float32 image is the exact rendering of the saved
      variables and may differ from the saved image by that precision's
      rounding (DCGAN, CPU, bf16, measured: up to 0.011; a fifth of the PNG's
      pixels one or two levels apart).

    Args:
        path_or_solution: a solution file or its loaded dict.
        generator: the generator that produced it.
        check_identity: refuse a generator whose class, weights or render
            settings (:func:`check_generator_identity`) differ.

    Raises:
        ValueError: if the generator is not the one the solution was made with, or
            for a file that predates per-problem class labels and cannot be
            rendered without its class (see :func:`with_condition_entries`).
    """
    sol = load_solution(path_or_solution) if not isinstance(path_or_solution, dict) else path_or_solution
    state = with_condition_entries(sol["state"], generator, int(sol["split"]))
    if check_identity:
        check_generator_identity(sol["generator"], generator)
    device = next(generator.buffers(), next(generator.parameters(), torch.zeros(0))).device
    state = {k: v.to(device) for k, v in state.items()}
    image = generator.render(state, int(sol["split"])).float().cpu()
    step = sol.get("consistency")
    return image if not step else (image + step["correction"].float().cpu()).clamp(-1.0, 1.0)


def with_condition_entries(state: Mapping[str, Tensor], generator, split: int) -> Dict[str, Tensor]:  # noqa: ANN001
    """``state`` with the class-label entries a conditional generator needs, for files that predate them.

    Solutions of class-conditional generators (NVIDIA's conditional snapshots)
    carry each problem's class in their state (entry ``class_label``, group
    ``condition``). Files written before per-problem labels have no such
    entry: their run used the generator's one ``class_label`` for every problem.

    * ``latent_space="w+"``: the class only chose the solve's starting latents;
      the saved W+ rows render without it. The entry is filled with the
      generator's default class (0 without one): the same image.
    * ``latent_space="gaussian_fit"``: the class picks the Gaussian fit the
      latents go through, so the image depends on it: refused, saying how to
      proceed.

    Raises:
        ValueError: for such a file and a generator whose rendering needs its class.
    """
    missing = [n for n, g in generator.groups(split).items() if g == "condition" and n not in state]
    if not missing:
        return dict(state)
    if getattr(generator, "latent_space", None) == "w+" and missing == ["class_label"]:
        try:
            (label,) = generator.check_labels(None, 1)
        except ValueError:  # no default class: any class renders W+ rows alike
            label = 0
        rows = next(iter(state.values())).shape[0]
        return {**state, "class_label": torch.full((rows,), float(label))}
    raise ValueError(
        f"this solution predates per-problem class labels: its state lacks {missing}, which this "
        f"{type(generator).__name__} (latent_space={getattr(generator, 'latent_space', None)!r}) needs to render "
        "it (the class picks the Gaussian fit its latents go through). It was written by an ilo-pl whose generator "
        "took one class_label for every problem: regenerate it with that version, or add the class the run used "
        "(its config.yaml's model.generator.init_args.class_label; the file's generator entry "
        "'setting.class_labels') to the loaded file, sol['state']['class_label'] = torch.tensor([float(c)]), and "
        "call regenerate(sol, generator, check_identity=False) (one class only: a run given several classes fitted "
        "their mixture, which this version does not render)"
    )


def load_generator(config: PathLike, device: Union[str, torch.device] = "cpu"):  # noqa: ANN201 - a SplitGenerator
    """Rebuild the generator of a run from its ``config.yaml`` (the ``model.generator`` entry).

    Args:
        config: a run's ``config.yaml`` (as written by ``ilo-pl fit``), or any
            config with a ``model: generator: {class_path, init_args}`` entry.
        device: where to put the generator.

    Raises:
        FileNotFoundError: if the config does not exist.
        ValueError: if it has no ``model.generator`` entry or that entry does
            not describe a :class:`~ilo_pl.modules.generators.base.SplitGenerator`.
    """
    import yaml
    from jsonargparse import ArgumentParser

    from ilo_pl.modules.generators.base import SplitGenerator

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config file {config} does not exist; pass the run folder's config.yaml")
    with open(config) as f:
        cfg = yaml.safe_load(f)
    gen_cfg = (cfg.get("model") or {}).get("generator") if isinstance(cfg, dict) else None
    if not gen_cfg:
        raise ValueError(
            f"{config} has no model.generator entry; pass the config.yaml of the run that made the solution"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--generator", type=SplitGenerator)
    try:
        parsed = parser.parse_object({"generator": gen_cfg})
        generator = parser.instantiate_classes(parsed).generator
    except Exception as exc:  # noqa: BLE001 - jsonargparse raises several types; re-raise as one
        if isinstance(exc, (FileNotFoundError, ValueError)):
            raise
        raise ValueError(f"cannot build the generator of {config} ({gen_cfg}): {exc}") from exc
    return generator.to(device)


def regenerate_file(
    solution: PathLike,
    config: PathLike,
    out: Optional[PathLike] = None,
    check_identity: bool = True,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """Regenerate a saved reconstruction from its solution file and its run's config.

    Args:
        solution: the ``<id>_solution.pt`` file.
        config: the ``config.yaml`` of the run that wrote it.
        out: write the image there as an 8-bit PNG (as the run wrote
            ``<id>_reconstruction.png``); ``None`` writes nothing.
        check_identity: refuse a generator whose class, weights or render settings differ.
        device: where to render.

    Returns:
        The image ``[1, C, H, W]`` (float32) as :func:`regenerate` returns it (the PNG clamps it to ``[-1, 1]``).
    """
    from ilo_pl.io import save_image

    sol = load_solution(solution)
    generator = load_generator(config, device)
    image = regenerate(sol, generator, check_identity=check_identity)
    if out is not None:
        save_image(image[0], out)
    return image
