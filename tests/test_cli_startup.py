"""The ``ilo-pl`` command's first minutes: a truthful command list, and fast answers.

Help, the command list and the config errors found without torch must not
import torch or Lightning (each takes seconds to import): checked in a fresh
process by the modules it imported, never by timing. ``precheck``'s keys and
verdicts are compared with LightningCLI's own parser, so it never refuses
what LightningCLI accepts. ``benchmarks/startup.py`` measures the times.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest
import yaml

from ilo_pl import precheck
from ilo_pl.cli import LIGHTNING_NOTICES, lightning_notices_hidden

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "lightning", "torchvision", "numpy", "jsonargparse")

# Runs ilo-pl's console entry point as the installed script does, then reports on stderr
# which heavy packages the process imported (atexit: also after SystemExit).
_RUNNER = """
import atexit, sys
def _report():
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
    sys.stderr.write("\\nHEAVY-MODULES: " + ",".join(heavy) + "\\n")
atexit.register(_report)
sys.argv = ["ilo-pl", *sys.argv[1:]]
from ilo_pl.cli import main
main()
""" % (HEAVY,)


def _ilo_pl(args: List[str], cwd: Path) -> Tuple[int, str, str, List[str]]:
    """``(exit status, stdout, stderr, heavy packages imported)`` of ``ilo-pl args`` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    err, _, heavy = proc.stderr.rpartition("HEAVY-MODULES: ")
    return proc.returncode, proc.stdout, err, [m for m in heavy.strip().split(",") if m]


def test_console_script_is_the_light_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ilo-pl"] == "ilo_pl.cli:main"


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    (d / "bad.yaml").write_text("model: [unclosed\n")
    (d / "list.yaml").write_text("- model\n- data\n")
    (d / "empty.yaml").write_text("# nothing\n")
    (d / "section.yaml").write_text("modle: {stages: []}\n")
    (d / "key.yaml").write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "configs/inpainting_box.yaml").read_text()),
                                                "data": {"batchsize": 2}}))
    (d / "trainer.yaml").write_text("trainer: {max_epoch: 2}\n")
    (d / "datapath.yaml").write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "configs/inpainting_box.yaml").read_text()),
                                                     "data.data": "gone/"}))
    return d


BOX = str(ROOT / "configs" / "inpainting_box.yaml")

CASES = [
    # (args, exit status, what stdout or stderr says)
    (["--help"], 0, ["fit ", "regenerate ", "demo "]),
    (["--version"], 0, ["ilo-pl "]),
    ([], 2, ["give a command: fit, regenerate or demo"]),
    (["validate"], 2, ["'validate' is not an ilo-pl command"]),
    (["test", "--config", BOX], 2, ["'test' is not an ilo-pl command"]),
    (["predict"], 2, ["'predict' is not an ilo-pl command"]),
    (["fitt"], 2, ["unknown command 'fitt' (did you mean 'fit'?)"]),
    (["--fit"], 2, ["unknown option '--fit'"]),
    (["regenerate", "--help"], 0, ["--solution", "--out"]),
    (["demo", "--help"], 0, ["--port", "--share", "--config"]),
    (["regenerate", "--solution", "nope_solution.pt", "--out", "x.png"], 2, ["--solution nope_solution.pt: no such file"]),
    (["fit"], 2, ["model.generator, model.stages, data.operator are not set", "--config configs/"]),
    (["fit", "--data.data", "faces/"], 2, ["model.generator, model.stages are not set"]),
    (["fit", "--config", "missing.yaml"], 2, ["config file missing.yaml does not exist"]),
    (["fit", "--config", "bad.yaml"], 2, ["config bad.yaml is not valid YAML", "line 1"]),
    (["fit", "--config", "list.yaml"], 2, ["config list.yaml: a config is a YAML mapping", "a list"]),
    (["fit", "--config", "empty.yaml"], 2, ["config empty.yaml: a config is a YAML mapping", "empty"]),
    (["fit", "--config", "section.yaml"], 2, ["unknown section 'modle' (did you mean 'model'?)"]),
    (["fit", "--config", "key.yaml"], 2, ["unknown key data.batchsize (did you mean 'batch_size'?)"]),
    (["fit", "--config", "trainer.yaml"], 2, ["unknown key trainer.max_epoch (did you mean 'max_epochs'?)"]),
    (["fit", "--config", BOX, "--model.stagez", "3"], 2, ["the model section has no key 'stagez' (did you mean 'stages'?)"]),
    (["fit", "--config", BOX, "--modle.stages", "3"], 2, ["unknown option --modle.stages"]),
    (["fit", "--config", BOX, "--data.data", "no_such_faces/"], 2, ["data.data: no_such_faces/ does not exist"]),
    (["fit", "--config", BOX, "--data.data=no_such.png"], 2, ["data.data: no_such.png does not exist"]),
    (["fit", "--config", "datapath.yaml"], 2, ["data.data: gone/ does not exist"]),
]


@pytest.mark.parametrize("args, status, says", CASES, ids=[" ".join(c[0])[:40] or "(none)" for c in CASES])
def test_help_and_early_errors_answer_without_torch(args, status, says, configs):
    code, out, err, heavy = _ilo_pl(args, configs)
    assert code == status, err
    for text in says:
        assert text in out + err
    assert heavy == [], f"`ilo-pl {' '.join(args)}` imported {heavy}"
    if status == 2:
        assert "Traceback" not in err


def test_help_lists_only_the_commands_that_work(configs):
    _, out, _, _ = _ilo_pl(["--help"], configs)
    assert "{fit,regenerate,demo}" in out
    listed = out.split("commands:")[1]
    assert "regenerate" in listed and "demo" in listed
    for refused in ("validate", "test", "predict"):
        assert refused not in out


# -- precheck never refuses what LightningCLI accepts -------------------------------------------
class _Parsers(Exception):
    pass


@pytest.fixture(scope="module")
def fit_parser():
    """LightningCLI's parser of ``fit``, as ``ilo-pl fit`` builds it."""
    from ilo_pl.lightning_cli import ILOCLI

    class Capture(ILOCLI):
        def parse_arguments(self, parser, args):  # noqa: ANN001, ANN201
            raise _Parsers(self._subcommand_parsers)

    with pytest.raises(_Parsers) as caught:
        Capture(args=["fit"])
    parsers = caught.value.args[0]
    assert list(parsers) == ["fit"], "ilo-pl has one LightningCLI subcommand: fit"
    return parsers["fit"]


def test_precheck_keys_are_the_parsers(fit_parser):
    keys = list(fit_parser.get_defaults().keys())
    sections = {s: {k.split(".")[1] for k in keys if k.startswith(s + ".")} for s in precheck.SECTIONS}
    assert precheck.section_keys() == sections
    assert {k for k in keys if "." not in k} | set(sections) | {"__path__"} == precheck.top_keys()
    for option in fit_parser._option_string_actions:  # every option of fit passes (argparse's table)
        precheck.check_option(option)
    required = sorted(a.dest for a in fit_parser._actions if getattr(a, "required", False))
    assert sorted(precheck.required_keys()) == required


def _parser_refuses(parser, args: List[str]) -> bool:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        return exc.code != 0
    return False


PROBE_CONFIGS = [
    {"modle": {"x": 1}}, {"modle": {}}, {"modle": None}, {"fit": {"data": {"seed": 3}}}, {"config": None},
    {"ckpt_path": None}, {"seed_everything": 3}, {"__path__": "x"}, {"print_config": None},
    {"model": {"stagez": 3}}, {"model": {"stagez": {}}}, {"model": {"dict_kwargs": {}}}, {"model": {"__path__": "x"}},
    {"model": {"class_path": "ilo_pl.modules.ilo.ILOModule"}}, {"model.selection": "last"}, {"model.selectio": "last"},
    {"trainer": {"max_epoch": 1}}, {"trainer": {"max_epochs": 1}}, {"output": {"outdir": "x"}},
    {"data": {"batchsize": 1}}, {"data": {"seed": 1}}, {"output": {"save_grid": False}}, {},
]
PROBE_OPTIONS = [
    ["--model.stagez", "3"], ["--model.selectio", "last"], ["--model.sel", "last"], ["--seed", "3"],
    ["--modle.stages", "3"], ["--modelx", "3"], ["--trainer.max_epoch", "2"], ["--model.gen.init_args.x", "3"],
    ["--model.generator.init_args.ngf", "64"], ["--model.selection=last"], ["--print_config=skip_null"],
    ["--data.batch_size", "1"], ["--output.run", "x"], ["--outputs.run_dir", "x"],
]


@pytest.mark.parametrize("probe", PROBE_CONFIGS, ids=str)
def test_precheck_refuses_a_config_only_when_lightning_does(probe, fit_parser):
    try:
        precheck.check_config(probe, "probe")
        refused = False
    except precheck.ArgumentsError:
        refused = True
    lightning = _parser_refuses(fit_parser, ["--config", BOX, "--config", yaml.safe_dump(probe), "--print_config"])
    assert refused == lightning, f"{probe}: precheck {'refuses' if refused else 'accepts'} it, LightningCLI does not"


PROBE_REQUIRED = [
    [], ["--data.data", "x"], ["--config", "{data: {seed: 1}}"], ["--config", BOX], ["--model", "{selection: last}"],
    ["--config", "{model: {generator: {class_path: ilo_pl.modules.generators.DCGANGenerator}}}"],
    ["--config", BOX, "--config", "{model: {selection: last}}"], ["--co", BOX], ["--conf=" + BOX],
]


@pytest.mark.parametrize("probe", PROBE_REQUIRED, ids=lambda p: " ".join(p)[:40] or "(none)")
def test_precheck_finds_missing_required_keys_only_when_lightning_does(probe, fit_parser):
    try:
        precheck.check_fit_args(probe)
        refused = False
    except precheck.ArgumentsError:
        refused = True
    lightning = _parser_refuses(fit_parser, [*probe, "--print_config"])
    assert not refused or lightning, f"precheck refuses {probe}, LightningCLI accepts it"
    assert refused == (not any(BOX in a for a in probe))


@pytest.mark.parametrize("probe", PROBE_OPTIONS, ids=" ".join)
def test_precheck_refuses_an_option_only_when_lightning_does(probe, fit_parser):
    try:
        precheck.check_fit_args(["--config", BOX, *probe])
        refused = False
    except precheck.ArgumentsError:
        refused = True
    lightning = _parser_refuses(fit_parser, ["--config", BOX, *probe, "--print_config"])
    assert not refused or lightning, f"precheck refuses {probe}, LightningCLI accepts it"
    assert refused == (probe[0] in ("--model.stagez", "--modle.stages", "--modelx", "--model.gen.init_args.x",
                                    "--outputs.run_dir"))


# -- Lightning's notices -------------------------------------------------------------------------
def test_lightning_notices_are_hidden_and_warnings_kept():
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    seen: List[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with lightning_notices_hidden():
                log.info("GPU available: False, used: False")
                log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
                log.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
                log.info("`Trainer.fit` stopped: `max_steps=5` reached.")  # problems may be left: kept
                log.warning("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
                warnings.warn("No seed found, seed set to 0")
                warnings.warn("your own warning")
            log.info("GPU available: True (cuda), used: True")  # outside ilo-pl's commands: untouched
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert seen == ["`Trainer.fit` stopped: `max_steps=5` reached.",
                    "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
                    "GPU available: True (cuda), used: True"]
    assert [str(w.message) for w in caught] == ["your own warning"]
    assert LIGHTNING_NOTICES  # the list the quick fit's stderr is checked against (test_cli.py)
