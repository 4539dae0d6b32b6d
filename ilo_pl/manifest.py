"""The run manifest: what a run's results depend on besides its config, recorded and compared.

A resumed run must produce what the first run would have: the writer records
``run_manifest.json`` (:data:`MANIFEST`, :func:`make_manifest`) when it first
uses a folder -- the effective trainer and torch settings that change results
(:func:`result_settings`), the generator's identity, the module's
result-changing settings (:func:`module_settings`: stages, loss weights and
terms, SNA, sphere, selection, range projection, ramps, restarts, consistency), the data module's
seed, operator and resize policy, and the problem source's fingerprint (for a
folder of images: every file's name, size and modification time) -- and
refuses to resume a folder that holds results when any of them differs
(:func:`compare_manifests`). A folder without results yet just gets the new
manifest.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ilo_pl.io import atomic_write_bytes


#: The file in a run folder that records what its results depend on besides the config.
MANIFEST = "run_manifest.json"
MANIFEST_FORMAT = "ilo-pl-run/1"


def result_settings(trainer: Any) -> Dict[str, Any]:
    """The trainer's effective settings that change results (not devices, logging or progress bars).

    Read from the live trainer and torch, not from a config, so defaults
    spelled differently (``precision: null`` vs ``32-true``) compare equal and
    a setting made outside the config counts too.
    """
    import torch

    clip = float(getattr(trainer, "gradient_clip_val", None) or 0.0)
    accel = type(trainer.accelerator).__name__
    out: Dict[str, Any] = {
        "accelerator": accel,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
        "gradient_clip_val": clip,
        # The algorithm only matters when clipping is on.
        "gradient_clip_algorithm": str(getattr(trainer, "gradient_clip_algorithm", None) or "norm") if clip else "",
        "deterministic": (
            "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else True
        ) if torch.are_deterministic_algorithms_enabled() else False,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    from ilo_pl.stages import MAX_STEPS_ENV, max_steps_cap

    cap = max_steps_cap()
    if cap is not None:  # recorded only when set, so manifests of uncapped runs are unchanged
        out[MAX_STEPS_ENV] = cap
    if accel == "CUDAAccelerator":  # these flags only act on CUDA kernels
        out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        out["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        out["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


#: Module attributes that change results, recorded when the module has them (``ILOModule``'s
#: names; ``project_to_range`` is stored as ``project_to_range_enabled``).
MODULE_SETTINGS = {
    "stages": "stages",
    "loss_weights": "loss_weights",
    "sna": "sna",
    "sna_samples": "sna_samples",
    "sphere": "sphere",
    "selection": "selection",
    "project_to_range": "project_to_range_enabled",
    "range_steps": "range_steps",
    "range_lr": "range_lr",
    "rampup": "rampup",
    "rampdown": "rampdown",
    "restarts": "restarts",
    "restart_keep": "restart_keep",
    "restart_average": "restart_average",
    "consistency": "consistency",
}

#: Settings added after manifests existed, recorded only when not at these defaults (the
#: results they had before), so that the manifest of a folder written before them still
#: matches. The CLI's check of the folder's config.yaml treats these options, missing from
#: an older config, the same way (:data:`ilo_pl.lightning_cli.ADDED_OPTION_DEFAULTS`);
#: ``restart_keep`` equal to ``restarts`` is unset (the module takes it so).
UNRECORDED_DEFAULTS = {"restarts": 1, "restart_keep": None, "restart_average": 1, "consistency": "none"}


#: Class paths recorded under an earlier name (in manifests and config files): the same class,
#: so a run folder that names it resumes.
RENAMED_CLASSES = {
    "ilo_pl.losses.base.MSELoss": "ilo_pl.losses.base.MeasurementLoss",
    "ilo_pl.losses.MSELoss": "ilo_pl.losses.MeasurementLoss",
}


def _qualname(obj: Any) -> str:
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return RENAMED_CLASSES.get(name, name)


def renamed(value: Any) -> Any:
    """``value`` with every class name of :data:`RENAMED_CLASSES` replaced by its current name."""
    if isinstance(value, str):
        return RENAMED_CLASSES.get(value, value)
    if isinstance(value, list):
        return [renamed(v) for v in value]
    if isinstance(value, dict):
        return {k: renamed(v) for k, v in value.items()}
    return value


def _tensors_sha1(module: Any) -> str:
    """SHA-1 of a module's parameters and buffers (non-persistent ones too: a loss target is one)."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return _sha1_of(sorted(named, key=lambda kv: kv[0]))


def _sha1_of(named: Sequence[Tuple[str, Any]]) -> str:
    """SHA-1 of named tensors: names, shapes, dtypes and raw bytes (any dtype, bfloat16 too)."""
    import hashlib

    import torch

    h = hashlib.sha1()
    for name, tensor in named:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able, stable description of a setting (no memory addresses).

    Plain values stay; paths become strings; dataclasses and plain objects
    (e.g. an operator spec) become their class and public attributes; tensors
    and modules are summarised by a SHA-1 of their values.
    """
    import dataclasses

    import torch

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, Path):
        return str(value)
    if depth > 4:
        return _qualname(value)
    if isinstance(value, (list, tuple)):
        return [describe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if torch.is_tensor(value):
        return {"tensor": list(value.shape), "sha1": _sha1_of([("", value)])}
    if isinstance(value, torch.nn.Module):
        return describe_module(value, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"class": _qualname(value),
                **{f.name: describe(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}}
    if type(value).__repr__ is not object.__repr__ and " at 0x" not in repr(value):
        return repr(value)
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return {"class": _qualname(value),
                **{k: describe(v, depth + 1) for k, v in sorted(attrs.items()) if not k.startswith("_")}}
    return _qualname(value)


def describe_module(module: Any, depth: int = 0) -> Dict[str, Any]:
    """A module (e.g. a loss term) as its class, its init arguments it keeps, ``extra_repr`` and weights' SHA-1.

    Init arguments are reachable when the module keeps them as attributes of
    the same name (``GeodesicLoss.reduction``); ``extra_repr`` covers others
    (``LPIPSLoss``'s ``net``).
    """
    import inspect

    import torch

    out: Dict[str, Any] = {"class": _qualname(module)}
    try:
        params = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    args = {}
    for name in params:
        if name == "self" or name.startswith("_") or name not in module.__dict__:
            continue  # submodules, parameters and buffers are not in __dict__: the digest covers them
        args[name] = describe(module.__dict__[name], depth + 1)
    if args:
        out["args"] = args
    extra = module.extra_repr() if isinstance(module, torch.nn.Module) else ""
    if extra and " at 0x" not in extra:
        out["repr"] = extra
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        out["tensors_sha1"] = _tensors_sha1(module)
    return out


def module_settings(module: Any) -> Dict[str, Any]:
    """The module's settings that change results (:data:`MODULE_SETTINGS` and its loss terms), those it has."""
    out: Dict[str, Any] = {"class": _qualname(module)}
    for key, attr in MODULE_SETTINGS.items():
        if hasattr(module, attr) and not callable(getattr(module, attr)):
            value = getattr(module, attr)
            if key in UNRECORDED_DEFAULTS and value == UNRECORDED_DEFAULTS[key]:
                continue
            out[key] = describe(value)
    losses = getattr(module, "losses", None)
    if hasattr(losses, "items"):
        out["losses"] = {str(name): describe_module(term) for name, term in losses.items()}
    return out


def data_settings(datamodule: Any) -> Dict[str, Any]:
    """The data module's settings that change results (``seed``, operator spec, ``resize``), those it has."""
    out: Dict[str, Any] = {}
    if datamodule is None:
        return out
    for key, attr in (("seed", "seed"), ("operator", "operator_spec"), ("resize", "resize")):
        if hasattr(datamodule, attr):
            out[key] = describe(getattr(datamodule, attr))
    # Each problem's class (data.class_labels), recorded only when given: unlabelled runs' manifests are unchanged.
    labels = getattr(datamodule, "class_label_table", None)
    if labels is not None:
        out["class_labels"] = dict(labels)
    return out


def make_manifest(trainer: Any, source: Any, datamodule: Any = None) -> Dict[str, Any]:
    """What :data:`MANIFEST` records for a run (JSON-ready, as it reads back).

    * ``settings``: :func:`result_settings` (trainer and torch);
    * ``problems``: ``source.fingerprint()``;
    * ``generator``: ``generator.identity()`` when the module has a generator
      with one (class, weights SHA-1, render settings), and its
      ``start_settings()`` as ``start.<name>`` (e.g. a default class);
    * ``module``: :func:`module_settings` (stages, loss weights and terms, SNA, ...);
    * ``data``: :func:`data_settings` of ``datamodule`` (seed, operator, resize).

    Only what exists is recorded, so any LightningModule and data module work.
    """
    manifest: Dict[str, Any] = {"format": MANIFEST_FORMAT, "settings": result_settings(trainer),
                                "problems": source.fingerprint()}
    module = getattr(trainer, "lightning_module", None)
    if module is not None:
        generator = getattr(module, "generator", None)
        if callable(getattr(generator, "identity", None)):
            # The same spelling as in solution files; the weights' digest is cached by the generator.
            manifest["generator"] = {str(k): str(v) for k, v in generator.identity().items()}
            start = getattr(generator, "start_settings", None)
            if callable(start):  # e.g. a conditional network's default class: where each solve starts
                manifest["generator"].update({f"start.{k}": str(v) for k, v in start().items()})
        manifest["module"] = module_settings(module)
    if datamodule is not None:
        manifest["data"] = data_settings(datamodule)
    return json.loads(json.dumps(manifest, sort_keys=True))  # tuples -> lists etc., as read back


def read_manifest(run_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The run folder's :data:`MANIFEST`, or ``None`` if it has none.

    Raises:
        ValueError: if the file exists but is not a manifest.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path} is not readable ({exc}); the run folder is damaged: start a new run folder"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an ilo-pl run manifest ({MANIFEST_FORMAT}); start a new run folder")
    return data


def write_manifest(run_dir: Union[str, Path], manifest: Dict[str, Any]) -> None:
    """Write :data:`MANIFEST` atomically."""
    atomic_write_bytes(Path(run_dir) / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


#: How a manifest's sections are named in messages: (one entry, the whole section).
_SECTIONS = {"settings": ("trainer setting", "trainer settings"),
             "generator": ("generator", "generator's identity"),
             "module": ("module setting", "module's settings"),
             "data": ("data setting", "data module's settings")}

#: Entries of ``settings`` that are process-wide torch settings, not Trainer arguments.
_TORCH_SETTINGS = {
    "float32_matmul_precision": "set by torch.set_float32_matmul_precision, not a trainer argument",
    "cudnn_benchmark": "torch.backends.cudnn.benchmark, set by trainer.benchmark or directly",
    "cudnn_allow_tf32": "torch.backends.cudnn.allow_tf32, not a trainer argument",
    "cuda_matmul_allow_tf32": "torch.backends.cuda.matmul.allow_tf32, not a trainer argument",
}


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaf_differences(a: Any, b: Any, path: str) -> List[Tuple[str, Any, Any]]:
    """``(dotted path, old, new)`` of the innermost entries where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[Tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                out += _leaf_differences(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) if x != y for d in _leaf_differences(x, y, f"{path}.{i}")]
    return [(path, a, b)]


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def compare_manifests(old: Dict[str, Any], new: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """Compare a recorded manifest with this run's: ``(refusals, notes)``, one line each.

    Refusals are differences that change results (a resume must be refused).
    Notes are what cannot be checked and is accepted with a warning: a
    section the recorded manifest lacks (written by an older ilo-pl), and
    image files whose size is unchanged but whose modification time differs
    (their contents cannot be compared: only names, sizes and times are
    recorded).
    """
    refusals: List[str] = []
    notes: List[str] = []
    old = renamed(old)
    for section, (label, whole) in _SECTIONS.items():
        if section not in new:
            continue
        if section not in old:
            notes.append(f"its {MANIFEST} does not record the {whole} (an older ilo-pl wrote it): not checked")
            continue
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, _MISSING) == b.get(key, _MISSING):
                continue
            if section == "settings" and key == "ILO_PL_MAX_STEPS":
                refusals.append(f"environment variable ILO_PL_MAX_STEPS (caps every stage's steps; smoke runs): "
                                f"{_short(a.get(key, _MISSING))} -> {_short(b.get(key, _MISSING))}")
                continue
            if section == "settings" and key in _TORCH_SETTINGS:
                refusals.append(f"torch setting {key} ({_TORCH_SETTINGS[key]}): "
                                f"{_short(a.get(key, _MISSING))} -> {_short(b.get(key, _MISSING))}")
                continue
            for path, x, y in _leaf_differences(a.get(key, _MISSING), b.get(key, _MISSING), key)[:5]:
                refusals.append(f"{label} {path}: {_short(x)} -> {_short(y)}")
    pa, pb = old.get("problems") or {}, new.get("problems") or {}
    if pa != pb:
        if "files" in pa and "files" in pb:
            fa = {f["name"]: f for f in pa["files"]}
            fb = {f["name"]: f for f in pb["files"]}
            added = sorted(set(fb) - set(fa))
            removed = sorted(set(fa) - set(fb))
            common = sorted(set(fa) & set(fb))
            resized = [n for n in common if fa[n].get("size") != fb[n].get("size")]
            touched = [n for n in common if n not in resized and fa[n] != fb[n]]
            for what, names in (("added", added), ("removed", removed), ("changed size", resized)):
                if names:
                    refusals.append(f"data folder: {what} {_listed(names)}")
            if touched:
                notes.append(
                    f"data folder: {_listed(touched)} modified since recorded (same name and size, other "
                    "modification time; contents are not recorded, so cannot be compared): assumed unchanged"
                )
        else:
            keys = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
            refusals.append(f"problems: {', '.join(keys)} differ")
    return refusals, notes


def manifest_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """The differences that forbid resuming, one line each (empty: none); see :func:`compare_manifests`."""
    return compare_manifests(old, new)[0]


def check_manifest(run_dir: Union[str, Path], manifest: Dict[str, Any], finished: bool = True) -> Optional[str]:
    """Why ``run_dir`` cannot be resumed with ``manifest`` (a message naming the differences), or ``None``.

    A folder without a manifest (new, or written before manifests existed)
    passes, and so does any folder that holds no result yet (``finished``
    false: nothing could be mixed; the caller records this run's manifest).
    What cannot be checked (see :func:`compare_manifests`) is accepted with a
    warning naming it.

    Raises:
        ValueError: if a folder with results has a manifest that does not read.
    """
    if not finished:
        return None
    old = read_manifest(run_dir)
    if old is None:
        return None
    refusals, notes = compare_manifests(old, manifest)
    if refusals:
        return (
            f"cannot resume {run_dir}: its results were made with other settings or problems "
            f"({'; '.join(refusals)}), so resuming would mix results that do not belong together "
            "(a changed data folder also shifts problem indices, seeds and masks). Start a new run folder "
            "(leave out --output.run_dir / run_dir), or resume with the run's own settings and data"
        )
    for note in notes:
        warnings.warn(f"resuming {run_dir}: {note}", stacklevel=3)
    return None
