"""Checks of ``ilo-pl fit``'s arguments that need neither torch nor Lightning.

``ilo-pl fit`` is LightningCLI, which refuses a bad config only after importing
torch, Lightning and every ilo-pl class (many seconds). The mistakes of the
first minutes (a config file that does not exist, is not YAML or not a
mapping, a misspelled section or key) are found here first, in milliseconds,
from the config files and the ``__init__`` signatures read out of the
classes' source files with :mod:`ast` (nothing is imported).

Only what LightningCLI refuses too is refused: :func:`check_fit_args` follows
jsonargparse's rules (empty mappings are ignored, keys may be dotted,
``--model.sel`` abbreviates ``--model.selection``, deeper keys such as
``--model.generator.init_args.x`` are left to LightningCLI), and a section
whose class cannot be read this way (a signature with ``**kwargs``, a source
file that is not found) is not checked. ``tests/test_cli_startup.py``
checks that the keys read here are exactly the ones the parser accepts.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import yaml

#: The sections of a ``fit`` config: (module, class) whose ``__init__`` arguments are its keys.
SECTIONS: Dict[str, Tuple[str, str]] = {
    "model": ("ilo_pl.modules.ilo", "ILOModule"),
    "data": ("ilo_pl.data", "InverseProblemDataModule"),
    "output": ("ilo_pl.callbacks.writer", "ResultWriter"),
    "trainer": ("pytorch_lightning.trainer.trainer", "Trainer"),
}
#: ``Trainer.fit`` arguments that LightningCLI fills itself (the others are top-level keys).
FIT_SKIPPED = frozenset({"self", "model", "train_dataloaders", "val_dataloaders", "datamodule"})
#: Top-level keys besides the sections and ``Trainer.fit``'s arguments.
TOP_KEYS = frozenset({"seed_everything", "config", "__path__"})
#: Keys jsonargparse accepts in any class section.
SECTION_EXTRAS = frozenset({"__path__", "dict_kwargs"})
#: Options of ``fit`` that are no config key.
OPTIONS = frozenset({"--help", "--print_config"})


class ArgumentsError(ValueError):
    """An error in ``ilo-pl fit``'s arguments that LightningCLI would report too."""


def _source_file(module: str) -> Optional[Path]:
    """The source file of ``module``, found without importing it or its packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _function_args(module: str, cls: str, method: str) -> Optional[FrozenSet[str]]:
    """Parameter names of ``cls.method`` in ``module``'s source; ``None`` if unknown or open (``**kwargs``)."""
    sig = _signature(module, cls, method)
    return None if sig is None else sig[0]


@lru_cache(maxsize=None)
def _signature(module: str, cls: str, method: str) -> Optional[Tuple[FrozenSet[str], FrozenSet[str]]]:
    """``(parameter names, those without a default)`` of ``cls.method``; ``None`` if unknown or open."""
    path = _source_file(module)
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    a = item.args
                    if a.vararg is not None or a.kwarg is not None:
                        return None  # jsonargparse may follow **kwargs elsewhere: do not guess
                    positional = a.posonlyargs + a.args
                    required = positional[: len(positional) - len(a.defaults)]
                    required += [p for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
                    names = frozenset(p.arg for p in positional + a.kwonlyargs) - {"self"}
                    return names, frozenset(p.arg for p in required) - {"self"}
            return None  # inherited __init__: not followed
    return None


@lru_cache(maxsize=None)
def section_keys() -> Dict[str, Optional[FrozenSet[str]]]:
    """The keys of each section (``None``: not known, not checked)."""
    return {name: _function_args(module, cls, "__init__") for name, (module, cls) in SECTIONS.items()}


def required_keys() -> List[str]:
    """The keys every ``fit`` needs (``model.generator``, ...): ``__init__`` arguments without a default."""
    out = []
    for name, (module, cls) in SECTIONS.items():
        sig = _signature(module, cls, "__init__")
        out += [f"{name}.{k}" for k in sorted(sig[1])] if sig is not None else []
    return out


@lru_cache(maxsize=None)
def top_keys() -> Optional[FrozenSet[str]]:
    """The top-level keys of a ``fit`` config (``None``: not known, not checked)."""
    fit = _function_args(SECTIONS["trainer"][0], "Trainer", "fit")
    if fit is None:
        return None
    return TOP_KEYS | frozenset(SECTIONS) | (fit - FIT_SKIPPED)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _split_dotted(mapping: Dict[Any, Any]) -> Iterator[Tuple[str, str, Any]]:
    """``(first, rest, value)`` per key; jsonargparse reads ``a.b: v`` as ``a: {b: v}``."""
    for key, value in mapping.items():
        first, _, rest = str(key).partition(".")
        yield first, rest, value


def check_config(cfg: Any, where: str) -> None:
    """Check one config (a file's or an inline ``--config`` string's content).

    Raises:
        ArgumentsError: naming ``where``, if it is not a mapping or names an unknown section or key.
    """
    if cfg == {}:
        return  # an explicit empty mapping is a layer that changes nothing (LightningCLI accepts it)
    if not isinstance(cfg, dict):
        shown = "empty" if cfg is None else f"a {type(cfg).__name__}, not a mapping"
        raise ArgumentsError(f"{where}: a config is a YAML mapping (model:, data:, ...); this one is {shown}")
    tops, keys = top_keys(), section_keys()
    for first, rest, value in _split_dotted(cfg):
        if value == {}:
            continue  # jsonargparse ignores empty mappings, under any name
        if tops is not None and first not in tops:
            hint = " (a config for `ilo-pl fit --config` holds fit's sections without `fit:` above them)" \
                if first == "fit" else _suggest(first, tops)
            raise ArgumentsError(
                f"{where}: unknown section {first!r}{hint}; "
                f"a fit config has {', '.join(sorted(k for k in tops if not k.startswith('_')))}"
            )
        if first not in keys or keys[first] is None:
            continue
        inner = {rest: value} if rest else value
        if not isinstance(inner, dict):
            continue  # a path or string for the whole section: LightningCLI reads it
        allowed = keys[first] | SECTION_EXTRAS
        for key, _, sub in _split_dotted(inner):
            if key not in allowed and sub != {}:
                raise ArgumentsError(
                    f"{where}: unknown key {first}.{key}{_suggest(key, allowed)}; "
                    f"`ilo-pl fit --help` lists the {first} keys"
                )


def _option_strings() -> Optional[List[str]]:
    """Every option of ``fit`` (``--model.stages``, ...); ``None`` if a section's keys are not known."""
    tops, keys = top_keys(), section_keys()
    if tops is None or any(v is None for v in keys.values()):
        return None
    opts = [f"--{k}" for k in tops if not k.startswith("_")] + sorted(OPTIONS)
    for section, names in keys.items():
        opts += [f"--{section}.{k}" for k in names]
    return opts


def check_option(token: str) -> None:
    """Check one ``--key[=value]`` token of the command line as argparse and jsonargparse would.

    Accepted: a known option, an abbreviation of one (argparse accepts a unique
    prefix; an ambiguous one is left to LightningCLI) and a deeper key under a
    known one (``--model.generator.init_args.checkpoint``, ``--model.stages.0.steps``).

    Raises:
        ArgumentsError: if no option of ``fit`` has this name.
    """
    opts = _option_strings()
    if opts is None or not token.startswith("--") or token == "--":
        return
    name = token.split("=", 1)[0].rstrip("+")  # --trainer.callbacks+=X appends
    if any(o.startswith(name) for o in opts):
        return
    parts = name[2:].split(".")
    if len(parts) > 2 and f"--{parts[0]}.{parts[1]}" in opts:
        return
    if len(parts) > 1 and f"--{parts[0]}" in opts and parts[0] in SECTIONS:
        names = [o[len(parts[0]) + 3:] for o in opts if o.startswith(f"--{parts[0]}.")]
        hint = _suggest(parts[1], names)
        raise ArgumentsError(f"unknown option {name}: the {parts[0]} section has no key {parts[1]!r}{hint}")
    raise ArgumentsError(f"unknown option {name}{_suggest(name, opts)}")


#: Options whose value is the next token (or follows ``=``).
_CONFIG_OPTIONS = ("-c", "--config")


def _config_values(argv: Sequence[str]) -> Iterator[str]:
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a == "--":
            return
        name, eq, value = a.partition("=")
        if name in _CONFIG_OPTIONS or (len(name) >= 4 and "--config".startswith(name)):
            if eq:
                yield value
            elif i + 1 < len(argv):
                yield argv[i + 1]
                next(it, None)


def load_config_arg(value: str) -> Any:
    """What ``--config value`` holds: a file's YAML, or an inline YAML mapping (as jsonargparse reads it).

    Raises:
        ArgumentsError: if ``value`` is no file (and no inline config) or not valid YAML.
    """
    path = Path(value)
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:  # a stream: YAML errors name the file
                return yaml.safe_load(f)
        except (OSError, UnicodeDecodeError) as exc:
            raise ArgumentsError(f"config {value}: cannot read it ({exc})") from None
        except yaml.YAMLError as exc:
            raise ArgumentsError(f"config {value} is not valid YAML: {exc}") from None
    if path.is_dir():
        raise ArgumentsError(f"config {value} is a folder, not a config file")
    try:
        inline = yaml.safe_load(value)
    except yaml.YAMLError:
        inline = value
    if isinstance(inline, str) or inline is None:
        raise ArgumentsError(f"config file {value} does not exist")
    return inline


def _provided(key: str, configs: Sequence[Any], argv: Sequence[str]) -> bool:
    """Whether a config or an argument may set ``key`` (``section.name``); when in doubt, yes."""
    section, name = key.split(".", 1)
    if any(a.startswith(f"--{section}") for a in argv):
        return True  # an override in the section, or the section's own config (--model X): LightningCLI judges
    for cfg in configs:
        if cfg.get("config") is not None or cfg.get("__path__") is not None:
            return True  # a config that names others
        for first, rest, value in _split_dotted(cfg):
            if first != section:
                continue
            inner = {rest: value} if rest else value
            if not isinstance(inner, dict) or any(k == name for k, _, _ in _split_dotted(inner)):
                return True
            if inner.get("__path__") is not None:
                return True
    return False


def _last_value(key: str, configs: Sequence[Any], argv: Sequence[str]) -> Any:
    """The value of ``key`` (``section.name``) the last config or ``--section.name`` option gives; ``None`` if unsure."""
    section, name = key.split(".", 1)
    value: Any = None
    for cfg in configs:
        for first, rest, val in _split_dotted(cfg):
            if first == section and isinstance(val, dict) and not rest and name in val:
                value = val[name]
            elif first == section and rest == name:
                value = val
    it = iter(argv)
    for a in it:
        opt, eq, val = a.partition("=")
        if opt == f"--{key}":
            value = val if eq else next(it, None)
        elif opt.startswith(f"--{section}") and opt != f"--{key}" and not opt.startswith(f"--{section}."):
            return None  # the section's own config (--data X): LightningCLI judges
    return value


def _check_data_path(configs: Sequence[Any], argv: Sequence[str]) -> None:
    value = _last_value("data.data", configs, argv)
    if isinstance(value, str) and value != "samples" and not Path(value).expanduser().exists():
        raise ArgumentsError(
            f"data.data: {value} does not exist (looked from {Path.cwd()}): give `data` a folder of "
            "images, an image file or 'samples' (the built-in sample faces)"
        )


def check_fit_args(argv: Sequence[str]) -> None:
    """Check ``ilo-pl fit``'s arguments (those after ``fit``) without importing torch or Lightning.

    Finds missing or unreadable config files, configs that are not YAML
    mappings, unknown sections and keys (with the nearest known one), keys
    that every run needs and nothing sets (``ilo-pl fit`` without a config),
    and unknown ``--section.key`` options. Leaves everything else (types, values,
    class paths, abbreviations that are ambiguous) to LightningCLI.

    Raises:
        ArgumentsError: the first error found.
    """
    if any(a in ("-h", "--help") or (len(a) > 3 and "--help".startswith(a)) for a in argv):
        return  # help comes first in LightningCLI too
    given: List[Any] = []
    for value in _config_values(argv):
        cfg = load_config_arg(value)
        check_config(cfg, f"config {value}")
        given.append(cfg)
    missing = [k for k in required_keys() if not _provided(k, given, argv)]
    if missing:
        raise ArgumentsError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start from a config "
            "(--config configs/inpainting_box.yaml, see configs/) or set "
            f"{'it' if len(missing) == 1 else 'them'} (--{missing[0]} ...)"
        )
    _check_data_path(given, argv)
    skip_next = False
    for a in argv:
        if a == "--":
            break
        if skip_next:
            skip_next = False
            continue
        name = a.split("=", 1)[0]
        if name in _CONFIG_OPTIONS or (len(name) >= 4 and "--config".startswith(name)):
            skip_next = "=" not in a  # its value may look like anything
            continue
        if a.startswith("--"):
            check_option(a)
