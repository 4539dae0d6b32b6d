"""Build the module, data module and trainer settings of a config, exactly as ``ilo-pl fit`` does.

Library code that runs a config outside the command line (the benchmarks,
notebooks) should read it here rather than picking keys out of the YAML: the
config goes through the command line's own parser (:class:`ilo_pl.cli.ILOCLI`,
LightningCLI + jsonargparse), with its layering (several configs, later ones
win), overrides, defaults, type checks and refusal of unknown keys, so every
option of the config reaches the objects built from it and none can be
dropped.

>>> from ilo_pl.config import build_from_config
>>> built = build_from_config(["configs/denoising.yaml"], {"data": {"limit": 2}})  # doctest: +SKIP
>>> module, datamodule, trainer_kwargs = built                                    # doctest: +SKIP
>>> built.module_kwargs["selection"], built.config["model"]["sna_samples"]        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Union

import numpy as np
import torch
import yaml

from ilo_pl.cli import ILOCLI
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.modules.ilo import ILOModule

#: Overrides: command-line style arguments (``["--model.selection", "last"]``) or one nested
#: mapping applied as a last config layer (``{"model": {"selection": "last"}}``).
Overrides = Union[Sequence[str], Mapping[str, Any], None]


@dataclass
class BuiltConfig:
    """What :func:`build_from_config` returns.

    Unpacks as ``module, datamodule, trainer_kwargs``.

    Attributes:
        module: the :class:`ILOModule`, built from the ``model`` section.
        datamodule: the :class:`InverseProblemDataModule`, built from the ``data`` section.
        trainer_kwargs: the ``trainer`` entries the config (or an override) sets to
            something other than the command line's defaults, instantiated (callbacks
            as objects), for ``pl.Trainer(**...)`` or ``ilo_pl.api.solve(trainer_kwargs=...)``.
        module_kwargs: every argument the module was built with (generator, stages,
            losses, ... and the defaults of the options the config leaves out), so
            that a variant of the module (other stages, another option) can be
            built with ``ILOModule(**{**module_kwargs, ...})`` or
            ``solve(generator, ..., **module_kwargs)`` without losing any option.
        datamodule_kwargs: likewise for the data module (the operator spec as an object).
        config: the resolved config as plain data (what ``--print_config`` prints).
    """

    module: ILOModule
    datamodule: InverseProblemDataModule
    trainer_kwargs: Dict[str, Any]
    module_kwargs: Dict[str, Any] = field(repr=False)
    datamodule_kwargs: Dict[str, Any] = field(repr=False)
    config: Dict[str, Any] = field(repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.module, self.datamodule, self.trainer_kwargs))

    def fingerprint(self, sections: Sequence[str] = ("model", "data"), exclude: Sequence[str] = ()) -> str:
        """A short hash of the resolved ``sections`` (dotted keys in ``exclude`` left out).

        Two configs with the same fingerprint build the same solver and problems
        (same generator settings, stages, options, operator and data settings).
        """
        return config_fingerprint(self.config, sections, exclude)


def config_fingerprint(config: Mapping[str, Any], sections: Sequence[str] = ("model", "data"),
                       exclude: Sequence[str] = ()) -> str:
    """12 hex digits of the SHA-256 of the resolved ``sections`` of ``config``, minus ``exclude`` keys."""
    picked = {s: json.loads(json.dumps(config.get(s), default=str)) for s in sections}
    for key in exclude:
        *parents, last = key.split(".")
        node: Any = picked
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _Builder(ILOCLI):
    """``ILOCLI`` that parses and instantiates as the command line does, but builds no Trainer.

    Nested classes (generator, losses, operator spec, callbacks) are instantiated
    by the parser itself; the ``model`` and ``data`` groups are then built from
    the resulting keyword arguments, which are kept (:class:`BuiltConfig`).
    """

    def instantiate_classes(self) -> None:
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
        init = instantiate(self.config, instantiate_groups=False)
        self.config_init = init
        self.module_kwargs = _plain_dict(init["model"])
        self.datamodule_kwargs = _plain_dict(init["data"])
        self.model = ILOModule(**self.module_kwargs)
        self.datamodule = InverseProblemDataModule(**self.datamodule_kwargs)
        defaults = self.parser.get_defaults()
        parsed, default = _as_dict(self.config.get("trainer")), _as_dict(defaults.get("trainer"))
        set_keys = [k for k in parsed if parsed[k] != default.get(k)]
        trainer = init.get("trainer") or {}
        self.trainer_kwargs = {k: trainer[k] for k in set_keys}
        self.trainer = None  # type: ignore[assignment]


def _as_dict(ns: Any) -> Dict[str, Any]:
    if ns is None:
        return {}
    return ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)


def _plain_dict(ns: Any) -> Dict[str, Any]:
    """Top-level keys of a jsonargparse Namespace as a dict (values left as instantiated)."""
    if hasattr(ns, "keys") and hasattr(ns, "__getitem__"):
        keys = list(ns.keys()) if not hasattr(ns, "__dict__") else list(vars(ns))
        return {k: ns[k] for k in keys}
    return dict(ns)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Give back the global RNGs (and ``PL_GLOBAL_SEED``) as they were: LightningCLI seeds them.

    The command line seeds everything at start-up; a library call must not reseed its
    caller (ILO's problems draw from their own seeded generators, never the global ones).
    """
    state = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(), os.environ.get("PL_GLOBAL_SEED"))
    seed_log = logging.getLogger("lightning_fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*seed set to.*")
            # Arguments given in code are what this function is for (LightningCLI warns when the
            # process also has command-line arguments, which are the caller's own).
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            yield
    finally:
        seed_log.setLevel(level)
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if state[3] is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = state[3]


def _override_args(overrides: Overrides) -> List[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return ["--config", json.dumps(dict(overrides), default=str)]
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of arguments or a mapping, not one string")
    return [str(a) for a in overrides]


def build_from_config(config_paths: Union[str, Path, Sequence[Union[str, Path]]],
                      overrides: Overrides = None) -> BuiltConfig:
    """Build the module, data module and trainer settings of configs as ``ilo-pl fit`` would.

    Args:
        config_paths: one config file or several, layered in order (later ones win),
            like repeated ``--config``.
        overrides: applied after the files: command-line arguments
            (``["--model.selection", "last", "--data.limit", "2"]``) or one nested
            mapping (``{"model": {"selection": "last"}}``; lists such as
            ``model.stages`` are replaced whole; a subclass's ``init_args`` given
            without ``class_path`` update the configured class's arguments).

    Returns:
        A :class:`BuiltConfig` (unpacks as ``module, datamodule, trainer_kwargs``).

    Raises:
        FileNotFoundError: if a config file does not exist.
        ValueError: if the parser rejects the config (unknown key, wrong type), with its message.
    """
    paths = [config_paths] if isinstance(config_paths, (str, Path)) else list(config_paths)
    args: List[str] = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"config {p} does not exist")
        args += ["--config", str(p)]
    args += _override_args(overrides)
    messages = io.StringIO()
    try:
        with _global_rng_kept(), contextlib.redirect_stderr(messages):
            cli = _Builder(args=args, run=False)
    except SystemExit as err:  # jsonargparse reports bad configs by printing usage and exiting
        text = messages.getvalue()
        reason = text[text.find("error:"):].strip() if "error:" in text else text.strip()[-2000:]
        raise ValueError(f"config {', '.join(map(str, paths))} (overrides {overrides!r}) is not valid "
                         f"(exit {err.code}): {reason}") from None
    if messages.getvalue():
        sys.stderr.write(messages.getvalue())
    dump = cli.parser.dump(cli.config, skip_none=False)
    return BuiltConfig(
        module=cli.model,
        datamodule=cli.datamodule,
        trainer_kwargs=cli.trainer_kwargs,
        module_kwargs=cli.module_kwargs,
        datamodule_kwargs=cli.datamodule_kwargs,
        config=yaml.safe_load(dump) or {},
    )
