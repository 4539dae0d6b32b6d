"""Every fenced block of README.md runs as it is written.

* ``python`` blocks run in a fresh interpreter from the repository root.
* ``bash`` blocks run with ``bash -eo pipefail`` in a scratch mirror of the
  repository root (a temporary folder whose entries are symlinks to the
  root's, except the outputs ``runs/`` and ``lightning_logs/``), so that
  their run folders land in the scratch folder, not in the checkout.
* ``yaml`` blocks are parsed and read as a config by the command line's own
  parser (:func:`ilo_pl.config.build_from_config`), which refuses unknown keys
  and wrong types; a fragment without a ``data`` section is read as a layer
  over ``configs/inpainting_box.yaml`` (like a second ``--config``).
* ``text`` blocks (trees, diagrams) are not run. A block without a language is
  an error: every block says what it is.

Quick settings come from the environment, never from edits of the text: the
blocks run with ``ILO_PL_MAX_STEPS=2`` (every stage capped at 2 steps, see
:func:`ilo_pl.stages.max_steps_cap`). A block that cannot run in the test suite
is marked in the README by the line ``<!-- readme-test: skip (reason) -->``
right above it; it is reported as skipped with that reason (``pytest -rs``).
A block that calls ``scripts/bootstrap.sh`` runs only where ``.venv`` is
already up to date (``bash scripts/bootstrap.sh --check``), so that the tests
never install packages; elsewhere it is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The environment the blocks run with: quick settings only.
QUICK_ENV = {"ILO_PL_MAX_STEPS": "2"}
RUNNABLE = {"python", "bash", "yaml"}
NOT_RUN = {"text"}
SKIP_MARK = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")
#: Top-level entries a scratch mirror does not link: the outputs the blocks write.
OUTPUTS = {"runs", "lightning_logs"}


@dataclass
class Block:
    """One fenced block of the README."""

    lang: str
    line: int  # of the opening fence, 1-based
    text: str
    skip: Optional[str]  # the reason of a skip mark above it

    @property
    def id(self) -> str:
        return f"{self.lang or 'none'}-L{self.line}"


def readme_blocks(path: Path = README) -> List[Block]:
    """The fenced blocks of ``path``, with their language, line and skip mark."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^( *)(```+)\s*([\w+-]*)\s*$", lines[i])  # indented: inside a list item
        if not fence:
            i += 1
            continue
        start, indent, ticks, lang = i, len(fence.group(1)), fence.group(2), fence.group(3).lower()
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        if i >= len(lines):
            raise AssertionError(f"README.md:{start + 1}: unclosed fenced block")
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        mark = SKIP_MARK.match(lines[prev].strip()) if prev >= 0 else None
        blocks.append(Block(lang, start + 1, "\n".join(body) + "\n", mark.group("reason").strip() if mark else None))
    return blocks


BLOCKS = readme_blocks()


def test_every_block_says_what_it_is_and_every_skip_says_why():
    assert BLOCKS, "README.md has no fenced blocks"
    for b in BLOCKS:
        assert b.lang in RUNNABLE | NOT_RUN, (
            f"README.md:{b.line}: a fenced block needs a language, one of {sorted(RUNNABLE | NOT_RUN)} "
            f"(got {b.lang!r})"
        )
        assert b.skip is None or b.lang in RUNNABLE, f"README.md:{b.line}: a skip mark on a {b.lang} block"
    stray = [i + 1 for i, line in enumerate(README.read_text(encoding="utf-8").splitlines())
             if line.lstrip().startswith("<!--") and "readme-test" in line and not SKIP_MARK.match(line.strip())]
    assert not stray, f"README.md lines {stray}: malformed readme-test marks (write <!-- readme-test: skip (why) -->)"
    runnable = [b for b in BLOCKS if b.lang in RUNNABLE]
    ran = [b for b in runnable if b.skip is None]
    assert len(ran) >= len(runnable) - len(ran), "most runnable README blocks should run in the tests"


def _quick_env() -> dict:
    env = dict(os.environ)
    env.update(QUICK_ENV)
    return env


def _scratch_mirror(tmp: Path) -> Path:
    """A folder that looks like the repository root: symlinks to its entries, without its outputs."""
    mirror = tmp / ROOT.name
    mirror.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in OUTPUTS:
            (mirror / entry.name).symlink_to(entry)
    # `../shared` beside the clone, as the blocks (and the README) expect it
    shared = ROOT.parent / "shared"
    if shared.exists():
        (tmp / "shared").symlink_to(shared)
    return mirror


def _bootstrapped() -> bool:
    check = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    return check.returncode == 0


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUNNABLE], ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line} ({block.lang}) marked skip: {block.skip}")
    if block.lang == "yaml":
        _check_yaml(block, tmp_path)
    elif block.lang == "python":
        run = subprocess.run([sys.executable, "-c", block.text], cwd=ROOT, env=_quick_env(),
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"README.md:{block.line}: python block failed:\n{run.stdout}\n{run.stderr}"
        _assert_quick(block, run)
    else:
        if "scripts/bootstrap.sh" in block.text and not _bootstrapped():
            pytest.skip(f"README.md:{block.line}: .venv is not up to date (bash scripts/bootstrap.sh --check "
                        "fails), so scripts/bootstrap.sh would install packages; run it, then the tests")
        mirror = _scratch_mirror(tmp_path)
        run = subprocess.run(["bash", "-eo", "pipefail", "-c", block.text], cwd=mirror, env=_quick_env(),
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"README.md:{block.line}: bash block failed:\n{run.stdout}\n{run.stderr}"
        _assert_quick(block, run)
        if "ilo-pl fit" in block.text:  # it wrote a run folder, into the scratch mirror
            runs = sorted((mirror / "runs").glob("run_*"))
            assert runs and (runs[-1] / "results.csv").is_file(), run.stdout + run.stderr
            assert list(runs[-1].glob("*_grid.png"))


def _assert_quick(block: Block, run: subprocess.CompletedProcess) -> None:
    """A block that solves must have run with the step cap (else it ran the full schedule)."""
    if "solve(" in block.text or "ilo-pl fit" in block.text:
        assert "ILO_PL_MAX_STEPS=2: every stage runs at most 2 steps" in run.stdout + run.stderr, (
            f"README.md:{block.line}: the step cap did not reach the solve:\n{run.stdout}\n{run.stderr}"
        )


def _check_yaml(block: Block, tmp_path: Path) -> None:
    from ilo_pl.config import build_from_config
    from ilo_pl.stages import Stage

    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), f"README.md:{block.line}: a yaml block should be a config mapping"
    path = tmp_path / "block.yaml"
    path.write_text(block.text)
    # A fragment (no data section) is read as a layer over the demo config, like a second --config.
    layers = [path] if "data" in data else [ROOT / "configs" / "inpainting_box.yaml", path]
    built = build_from_config(layers)  # the command line's parser: unknown keys and wrong types are refused
    stages = built.module_kwargs["stages"]
    if "stages" in data.get("model", {}):
        want = [s if isinstance(s, Stage) else Stage(**s) for s in data["model"]["stages"]]
        assert [(s.split, s.steps, s.lr, s.free, s.radius) for s in stages] == [
            (s.split, s.steps, s.lr, s.free, s.radius) for s in want
        ]
