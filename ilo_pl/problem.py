"""The unit of work: a batch of inverse problems and the result of solving it."""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ilo_pl.operators.base import Operator

#: Longest problem id, in UTF-8 bytes: ``<id>_reconstruction.png`` and the
#: temporary ``.<name>.<random>.tmp`` it is written through must stay within
#: the usual 255-byte limit on a file name.
MAX_ID_BYTES = 200


def problem_id_error(pid: object) -> Optional[str]:
    """Why ``pid`` cannot be a problem id (a file-name prefix in a run folder), or ``None`` if it can.

    Refused, and only these: a non-string, the empty string, a path
    separator (``/`` or ``\\``), a leading ``.`` (hidden files; ``..`` would
    leave the run folder), a control character (Unicode category ``Cc``), and
    more than :data:`MAX_ID_BYTES` bytes in UTF-8. Everything else that is
    valid in a POSIX file name is accepted, including characters Windows
    forbids in file names (``: * ? " < > |``): such ids work on Linux and
    macOS but not on Windows. An id is only the first part of its files'
    names (``<id>_reconstruction.png``), so trailing dots or spaces and
    Windows device names (``CON``, ``NUL``) do not end up as a whole name.
    """
    if not isinstance(pid, str):
        return f"it is a {type(pid).__name__}, not a string"
    if not pid:
        return "it is empty"
    if "/" in pid or "\\" in pid:
        return "it contains a path separator ('/' or '\\'), so its files would land outside the run folder"
    if pid.startswith("."):
        return "it starts with '.' (hidden files; '..' would leave the run folder)"
    if any(unicodedata.category(c) == "Cc" for c in pid):
        return "it contains a control character"
    if len(pid.encode("utf-8")) > MAX_ID_BYTES:
        return f"it is longer than {MAX_ID_BYTES} bytes (file names are limited to 255)"
    return None


def check_problem_ids(ids: Iterable[object], what: str = "problem ids") -> List[str]:
    """Check that ``ids`` are safe file-name prefixes and distinct; returns them as a list.

    Ids are compared case-insensitively too: on a case-insensitive file system
    (macOS, Windows) ``A`` and ``a`` would write the same files.

    Raises:
        ValueError: naming the first bad or repeated id, why, and the fix.
    """
    ids = list(ids)
    seen: Dict[str, object] = {}
    for pid in ids:
        why = problem_id_error(pid)
        if why is not None:
            raise ValueError(
                f"{what}: {pid!r} cannot name output files: {why}. An id must be a non-empty string of at "
                f"most {MAX_ID_BYTES} UTF-8 bytes without '/', '\\', control characters or a leading '.', "
                "e.g. 'face_01'"
            )
        key = pid.casefold()
        if key in seen:
            same = "" if seen[key] == pid else f" (as {seen[key]!r}, ignoring case)"
            raise ValueError(
                f"{what}: {pid!r} is given twice{same}; two problems would write the same files. "
                "Give each problem its own id"
            )
        seen[key] = pid
    return ids


def safe_problem_id(text: str) -> str:
    """``text`` made into a valid problem id: unsafe characters become ``_``, leading dots go, long ids are cut.

    Used for ids derived from file names; the caller must still make them
    distinct (two texts can map to one id).
    """
    out = "".join("_" if c in "/\\" or unicodedata.category(c) == "Cc" else c for c in text).lstrip(".")
    while len(out.encode("utf-8")) > MAX_ID_BYTES:
        out = out[:-1]
    return out or "_"


@dataclass
class ProblemBatch:
    """``B`` independent problems solved together.

    Attributes:
        ids: one name per problem (used for output file names; checked by
            :func:`check_problem_ids`: safe file-name prefixes, distinct).
        observation: ``y`` ``[B, ...]``.
        operator: the batched operator (per-sample buffers stacked on dim 0).
        seeds: one seed per problem; it seeds that problem's initial variables,
            so a problem's result does not depend on its batch-mates.
        target: the ground-truth image ``[B, C, H, W]`` in ``[-1, 1]`` when known.
        indices: the problems' indices in the data set (for sharding/resume).
        labels: one class label per problem, for class-conditional generators
            (the data's ``class_labels``); ``None``: the generator's default
            (unconditional generators take none). Each problem starts from its
            own class, whatever its batch-mates' (checked by the generator
            when the solve starts).
    """

    ids: List[str]
    observation: Tensor
    operator: Operator
    seeds: List[int]
    target: Optional[Tensor] = None
    indices: List[int] = field(default_factory=list)
    labels: Optional[List[int]] = None

    def __post_init__(self) -> None:
        # Ids name output files: refuse unsafe or repeated ones before any work.
        self.ids = check_problem_ids(self.ids)
        b = len(self.ids)
        if self.observation.shape[0] != b or len(self.seeds) != b:
            raise ValueError(
                f"a ProblemBatch of {b} ids needs {b} observations and seeds; got "
                f"{self.observation.shape[0]} observations and {len(self.seeds)} seeds"
            )
        if self.target is not None and self.target.shape[0] != b:
            raise ValueError(f"target has {self.target.shape[0]} images for {b} problems")
        if self.labels is not None:
            self.labels = list(self.labels)
            if len(self.labels) != b:
                raise ValueError(
                    f"a ProblemBatch of {b} ids needs {b} class labels (one per problem); got {len(self.labels)}"
                )

    @property
    def key(self) -> tuple:
        """Identity of the problem batch (a new key starts a new solve)."""
        labels = () if self.labels is None else ("labels",) + tuple(self.labels)
        return tuple(self.ids) + tuple(self.seeds) + labels

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "ProblemBatch":
        """A copy on ``device`` (the operator module is moved in place).

        The copy is of the batch's own class, with every other field as it is
        (a subclass's too: :class:`~ilo_pl.modules.restarts.RestartBatch` keeps its rows' problems).
        """
        return dataclasses.replace(
            self,
            observation=self.observation.to(device),
            operator=self.operator.to(device),
            target=None if self.target is None else self.target.to(device),
        )


@dataclass
class Solution:
    """The saved variables of one problem: enough to regenerate its reconstruction.

    Attributes:
        split: the split point of ``state``.
        stage: index of the stage the best iterate came from.
        state: the full state at ``split`` (one sample, batch dim 1).
        restart: which of the problem's restarts it is (``0``: the problem's
            own seed; see :mod:`ilo_pl.modules.restarts`).
        consistency: the final consistency step applied (``"none"``,
            ``"project"``, ``"prox"``; see :mod:`ilo_pl.operators.consistency`).
        correction: the change of the image on top of the rendering,
            ``[1, C, H, W]`` float32 (``None`` without one): the mean over
            restarts (``averaged``) and the consistency step. The reconstruction
            is then ``clamp(render(state, split) + correction, -1, 1)``, not in
            the generator's range.
        averaged: the restarts whose images were averaged into the
            reconstruction (``restart_average``, best first; ``state`` is the
            first's); empty when the image is one restart's own.
    """

    split: int
    stage: int
    state: Dict[str, Tensor]
    restart: int = 0
    consistency: str = "none"
    correction: Optional[Tensor] = None
    averaged: Tuple[int, ...] = ()


@dataclass
class ProblemResult:
    """What solving one problem batch produced.

    Attributes:
        batch: the problem batch.
        images: the best iterate per sample ``[B, C, H, W]`` in ``[-1, 1]`` (after the
            module's finish: with its consistency step, or the mean over restarts).
        measurement_loss: its measurement error per sample ``[B]``.
        solutions: per sample, the variables that regenerate ``images[b]``.
        stage_losses: per stage, the best measurement error per sample.
        failed: per sample, ``None`` or the reason the solve failed (NaN/inf).
        start: the variables the solve started from (stage 0's initial state,
            all samples: batch dim ``B``, on the CPU) and their split; render
            them for the start image (tasks judged against their start, such
            as classifier guidance). ``None`` when not recorded.
    """

    batch: ProblemBatch
    images: Tensor
    measurement_loss: Tensor
    solutions: List[Solution]
    stage_losses: List[Tensor]
    failed: List[Optional[str]]
    start: Optional[Solution] = None
