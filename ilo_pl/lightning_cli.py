"""``ilo-pl fit``: LightningCLI over :class:`ILOModule` and :class:`InverseProblemDataModule`.

The ``ilo-pl`` command itself is :mod:`ilo_pl.cli`, which imports this module
(and with it torch and Lightning) only for ``fit``. :class:`ILOCLI` adds to
LightningCLI: ILO's trainer defaults, the ``output`` section
(:class:`~ilo_pl.callbacks.writer.ResultWriter`), indexed overrides of list
entries (``--model.stages.0.steps 100``), a run folder with the resolved
``config.yaml`` (checked against the folder's when resuming), and no run folder
left behind by a run that fails before it has solved a problem.

There is deliberately no ``optimizer:``/``lr_scheduler:`` entry: ILO rebuilds
its Adam optimizer at every stage over the new variables, with the per-stage
``lr`` and ramp schedule. (LightningCLI would otherwise let such an entry
replace ``configure_optimizers`` silently.)
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

import ilo_pl.strategy  # noqa: F401 - registers strategy="ilo_ddp"
from ilo_pl.callbacks.writer import RUN_MARKER, ResultWriter
from ilo_pl.cli import lightning_notices_hidden
from ilo_pl.compat import cli_parser, move_logger, replace_callback
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.io import atomic_write_bytes
from ilo_pl.manifest import MANIFEST, renamed
from ilo_pl.modules.ilo import ILOModule
from ilo_pl.resume import has_results
from ilo_pl.stages import MAX_STEPS_ENV, max_steps_cap
from ilo_pl.trainer import TRAINER_DEFAULTS, quiet_lightning

#: Config entries that may change when a run is resumed (they do not change any result).
RESUME_IGNORED = {"model.log_every"}

#: Options added after run folders existed, with the default that gives the results they had
#: before: a folder's config.yaml without one of them compares as if it held this value, so a
#: folder written before them still resumes (the manifest leaves them out alike:
#: :data:`ilo_pl.manifest.UNRECORDED_DEFAULTS`).
ADDED_OPTION_DEFAULTS = {
    "model.restarts": 1,
    "model.restart_keep": None,
    "model.restart_average": 1,
    "model.consistency": "none",
    "data.class_labels": None,
}

#: What a run folder holds before its first problem is solved (all written by ilo-pl; the
#: list of input files the data left out is ResultWriter's SKIPPED_CSV).
BOOKKEEPING = frozenset({RUN_MARKER, "config.yaml", MANIFEST, "skipped_inputs.csv"})


class ILOCLI(LightningCLI):
    """LightningCLI with ILO's defaults and an ``output`` section (:class:`ResultWriter`).

    Only the ``fit`` subcommand exists (LightningCLI's ``validate``, ``test`` and
    ``predict`` have nothing to do in ILO). Lightning's notices that say nothing
    about an ILO run (see :func:`ilo_pl.cli.lightning_notices_hidden`) are hidden
    while it runs.
    """

    def __init__(self, args: Optional[List[str]] = None, run: bool = True) -> None:
        quiet_lightning()
        #: The run folder this run made (or found empty) and whether it made it: discarded if the run fails unused.
        self._new_run_dir: Optional[Tuple[Path, bool]] = None
        with lightning_notices_hidden():
            super().__init__(
                ILOModule,
                InverseProblemDataModule,
                subclass_mode_model=False,
                subclass_mode_data=False,
                auto_configure_optimizers=False,
                save_config_callback=None,
                trainer_defaults=TRAINER_DEFAULTS,
                args=args,
                run=run,
            )

    @staticmethod
    def subcommands() -> Dict[str, set]:
        """Only ``fit``: ILO solves and writes every problem there."""
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResultWriter, "output")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse as LightningCLI does, after turning indexed overrides into whole-list ones (see :func:`index_overrides`)."""
        if args is None or isinstance(args, (list, tuple)):
            argv = list(sys.argv[1:] if args is None else args)
            rest, edits = index_overrides(argv)
            if edits:
                new = rest if _asks_help(rest) else rest + self._edited_lists(parser, rest, edits)
                with warnings.catch_warnings():
                    # argv in place of args=None: LightningCLI warns when both are set.
                    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
                    return super().parse_arguments(parser, new)
        return super().parse_arguments(parser, args)

    def _edited_lists(self, parser: LightningArgumentParser, rest: List[str], edits: List[Tuple[str, str]]) -> List[str]:
        """``--<list> <yaml>`` arguments that set each list named by ``edits`` with the edits applied."""
        first = parser.parse_args(_without_print_config(rest))
        subcommand = first.get("subcommand")
        cfg_parser, cfg = (cli_parser(self, subcommand), first[subcommand]) if subcommand else (parser, first)
        plain = yaml.safe_load(cfg_parser.dump(cfg, skip_none=False)) or {}
        lists: Dict[str, Any] = {}
        for key, value in edits:
            parts = key.split(".")
            at = next(i for i, p in enumerate(parts) if p.isdigit())
            list_key = ".".join(parts[:at])
            if list_key not in lists:
                node: Any = plain
                for p in parts[:at]:
                    node = node.get(p) if isinstance(node, dict) else None
                if not isinstance(node, list):
                    parser.error(f"--{key}: {list_key} is not a list (an index such as .0 picks an entry of a list)")
                lists[list_key] = node
            _set_path(lists[list_key], parts[at:], _read_value(value), key, parser)
        out: List[str] = []
        for list_key, value in lists.items():
            out += [f"--{list_key}", yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()]
        return out

    def before_fit(self) -> None:
        trainer = self.trainer
        writer = next(c for c in trainer.callbacks if isinstance(c, ResultWriter))
        # The process that was launched first (rank 0) creates the run folder and
        # writes config.yaml; processes Lightning launches later, or that a
        # cluster starts beside it, get the folder from rank 0 by broadcast in
        # ResultWriter.setup. (Before the process group exists, a launched
        # child's trainer.global_rank still reads 0, hence launch_rank.)
        if launch_rank(trainer) == 0:
            cfg_text = cli_parser(self, self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            cap = max_steps_cap()
            if cap is not None:  # the file must not pass for the schedule that ran (a YAML comment: resume ignores it)
                cfg_text = (f"# {MAX_STEPS_ENV}={cap} capped every stage at {cap} steps in this run (a smoke run);\n"
                            f"# the `steps` below are the schedule's, not the steps that ran.\n") + cfg_text
            given = None if writer.run_dir is None else Path(writer.run_dir)
            created = given is None or not given.exists()
            empty = created or (given.is_dir() and not any(given.iterdir()))
            writer.open_run_dir()
            if empty:
                self._new_run_dir = (writer.run_dir, created)
            try:
                cfg_path = writer.run_dir / "config.yaml"
                if cfg_path.is_file():  # resuming: the problems must be the same ones
                    check_resume_config(cfg_path, cfg_text)
                else:
                    atomic_write_bytes(cfg_path, cfg_text.encode())
                redirect_loggers(trainer, writer.run_dir)
            except BaseException:
                self._discard_unused_run_dir()
                raise
            print(f"ilo-pl: writing results to {writer.run_dir}", file=sys.stderr, flush=True)
        install_problem_progress_bar(trainer)

    def fit(self, model: Any, **kwargs: Any) -> None:
        """``trainer.fit``; a run folder this run made is removed again if the run fails before solving a problem."""
        try:
            self.trainer.fit(model, **kwargs)
        except BaseException:
            self._discard_unused_run_dir()
            raise

    def _discard_unused_run_dir(self) -> None:
        """Remove the run folder this run made, if it holds nothing but ilo-pl's bookkeeping files.

        A folder holding anything else (results, a logger's files) is kept: it
        can be resumed, and no file ilo-pl did not write is ever deleted. A
        folder that existed (empty) before the run is emptied, not removed.
        """
        made, self._new_run_dir = self._new_run_dir, None
        if made is None or not made[0].is_dir():
            return
        run_dir, created = made
        try:
            names = {p.name for p in run_dir.iterdir()}
            if not names <= BOOKKEEPING:
                what = (f"what it finished is in {run_dir} (resume it with --output.run_dir {run_dir})"
                        if has_results(run_dir) else f"{run_dir} is left as it is (it holds {', '.join(sorted(names))})")
                print(f"ilo-pl: the run failed; {what}", file=sys.stderr, flush=True)
                return
            for name in names:
                (run_dir / name).unlink()
            if created:
                run_dir.rmdir()
        except OSError as exc:  # cleaning up must never hide the run's own error
            warnings.warn(f"could not remove the unused run folder {run_dir}: {exc}", stacklevel=2)
            return
        print(f"ilo-pl: removed {run_dir if created else 'the files it wrote into ' + str(run_dir)}: the run "
              "failed before solving a problem", file=sys.stderr, flush=True)


_INDEXED = re.compile(r"--([A-Za-z_][\w]*(?:\.\w+)*\.\d+(?:\.\w+)*)")


def index_overrides(argv: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Split indexed overrides of list entries off ``argv``.

    ``--model.stages.0.steps 100`` (or ``--model.stages.0.steps=100``) sets one
    key of one entry of a list (entries count from 0); jsonargparse itself only
    replaces a list whole (``--model.stages '[{split: 0, steps: 100}, ...]'``).
    :class:`ILOCLI` applies the edits to the list that all configs and other
    overrides give, then sets that list whole, after everything else.

    Returns:
        ``(the other arguments, [(dotted key, value text), ...])``.
    """
    rest: List[str] = []
    edits: List[Tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        name, eq, value = a.partition("=")
        m = _INDEXED.fullmatch(name)
        if m and (eq or i + 1 < len(argv)):
            edits.append((m.group(1), value if eq else argv[i + 1]))
            i += 1 if eq else 2
            continue
        rest.append(a)
        i += 1
    return rest, edits


def _asks_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _without_print_config(argv: Sequence[str]) -> List[str]:
    """``argv`` without ``--print_config[=flags]`` (and a flags argument after it)."""
    out: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            if all(f in ("", "skip_default", "skip_unset", "skip_null", "comments") for f in a.split(",")):
                continue
        name = a.split("=", 1)[0]
        if len(name) > 3 and "--print_config".startswith(name):
            skip = "=" not in a
            continue
        out.append(a)
    return out


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _read_value(text: str) -> Any:
    """A command-line value as YAML, as jsonargparse reads it (``1e-3`` is a number, as there)."""
    if _SCIENTIFIC.fullmatch(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(node: Any, parts: List[str], value: Any, key: str, parser: Any) -> None:
    """Set ``node[parts[0]][parts[1]]... = value`` (list indices and mapping keys); ``key`` names it in errors."""
    at = key.split(".")[: len(key.split(".")) - len(parts)]
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                parser.error(f"--{key}: {'.'.join(at)} has {len(node)} entries (0 to {len(node) - 1}); no entry {p}")
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if p not in node and isinstance(node.get("init_args"), dict):
                node = node["init_args"]  # a class entry: its arguments
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
        else:
            parser.error(f"--{key}: {'.'.join(at)} is a {type(node).__name__}, which has no entry {p}")
        at.append(p)


def launch_rank(trainer: Any) -> int:
    """This process's global rank as its launcher assigned it (valid before the process group exists)."""
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    if env is None:
        return 0
    try:
        return int(env.node_rank()) * int(strategy.num_processes) + int(env.local_rank())
    except (AttributeError, TypeError):
        return int(trainer.global_rank)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _compared_sections(config: Dict[str, Any]) -> Dict[str, Any]:
    """The flattened ``model`` and ``data`` entries of a config that resuming compares.

    Leaves out :data:`RESUME_IGNORED`; an option of :data:`ADDED_OPTION_DEFAULTS`
    missing from its section (a config written before the option) gets its default,
    and ``restart_keep`` equal to ``restarts`` (keeps them all) counts as unset, as the module takes it.
    """
    out = {k: v for k, v in _flatten({s: config.get(s) for s in ("model", "data")}).items() if k not in RESUME_IGNORED}
    for key, default in ADDED_OPTION_DEFAULTS.items():
        section, name = key.split(".", 1)
        if not isinstance(config.get(section), dict) or name not in config[section]:
            out[key] = default
    if out.get("model.restart_keep") is not None and out.get("model.restart_keep") == out.get("model.restarts"):
        out["model.restart_keep"] = None
    return out


def check_resume_config(existing: Path, new_text: str) -> None:
    """Refuse to resume a run folder with a config that defines other problems or another solver.

    Compares the ``model`` and ``data`` sections (except :data:`RESUME_IGNORED`); an
    option of :data:`ADDED_OPTION_DEFAULTS` that the folder's config lacks (written
    before the option existed) counts as its default.
    The trainer settings that change results (precision, gradient accumulation,
    deterministic algorithms, ...) and the data folder's contents are checked
    from their effective values by :class:`ResultWriter` (``run_manifest.json``,
    see :mod:`ilo_pl.manifest`); the rest of ``trainer`` (devices, loggers,
    progress bar) and ``output`` may differ.

    Raises:
        ValueError: naming the entries that differ.
    """
    with open(existing) as f:
        try:
            old = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            old = exc
    if not isinstance(old, dict):
        raise ValueError(
            f"cannot resume {existing.parent}: its config.yaml is not an ilo-pl config (not a YAML mapping). "
            "Start a new run folder (leave out --output.run_dir)"
        )
    new = yaml.safe_load(new_text) or {}
    old = renamed(old)  # class paths recorded under an earlier name
    a, b = _compared_sections(old), _compared_sections(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:5])
        # Entries the folder's config lacks may be options added since the ilo-pl that wrote it
        # (e.g. new init args): no config resumes the folder then, so a new run folder is the fix.
        newer = [k for k in diff if k not in a]
        hint = (
            f" ({', '.join(newer[:3])}{' ...' if len(newer) > 3 else ''}: not in its config.yaml; if these are "
            "options added since the ilo-pl version that wrote it, this version cannot resume it)" if newer else
            f"; if the differences are your own overrides, resume without them (--config {existing})"
        )
        raise ValueError(
            f"cannot resume {existing.parent}: its config.yaml differs in {shown}"
            f"{' ...' if len(diff) > 5 else ''}. Start a new run folder (leave out --output.run_dir){hint}"
        )


def redirect_loggers(trainer: Any, run_dir: Path) -> None:
    """Make CSV and TensorBoard loggers write into the run folder (``<run_dir>/<name>/<version>``)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    for logger in trainer.loggers:
        if not isinstance(logger, (CSVLogger, TensorBoardLogger)):
            continue
        if not move_logger(logger, run_dir):
            warnings.warn(
                f"{type(logger).__name__} already started in {logger.save_dir}; it is not moved to {run_dir}",
                stacklevel=2,
            )


def install_problem_progress_bar(trainer: Any) -> None:
    """Swap Lightning's stock progress bar for one that shows the problem and stage."""
    from ilo_pl.callbacks.progress import problem_progress_bar_for

    for cb in trainer.callbacks:
        new = problem_progress_bar_for(cb)
        if new is not None:
            replace_callback(trainer, cb, new)
            return
