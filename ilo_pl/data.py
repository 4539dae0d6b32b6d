"""Problem sources and the ``InverseProblemDataModule``.

A *source* lists problems and loads each one's ground truth (if any); the
data module turns them into :class:`~ilo_pl.problem.ProblemBatch` es with a
seeded operator per problem and yields each batch once per optimizer step
(ILO runs a whole stage schedule on one batch before moving on).

Seeds: problem ``i`` of a run with seed ``s`` uses ``problem_seed(s, i)`` for
its operator, its observation noise and its initial variables, so results do
not depend on batch size, batch-mates, sharding or resumption.

Class labels (class-conditional generators, e.g. NVIDIA's conditional
StyleGAN2-ADA snapshots): ``class_labels`` of the data module gives each
problem its class, either one int for every problem or a CSV file
(:func:`read_class_labels`) with a ``file,label`` row per image, keyed by the
image's file name (for the built-in samples and generator draws, by the
problem id). The batch carries them (:attr:`~ilo_pl.problem.ProblemBatch.labels`)
and the generator keeps each problem's class in its state, so saved solutions
regenerate with it.
"""

from __future__ import annotations

import abc
import csv
import logging
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ilo_pl.io import IMAGE_SUFFIXES, load_image
from ilo_pl.operators.base import Operator, OperatorSpec
from ilo_pl.problem import MAX_ID_BYTES, ProblemBatch, safe_problem_id

log = logging.getLogger(__name__)

#: Face crops ``(left, top, right, bottom)`` in the 64x64 DCGAN's framing.
SAMPLE_FACES = {
    "astronaut": ("skimage", (165, 52, 280, 167)),
    "grace_hopper": ("matplotlib", (140, 95, 390, 345)),
}


def folder_ids(names: Sequence[str]) -> List[str]:
    """Distinct, file-name-safe problem ids for the files ``names`` of one folder (in that order).

    A file's id is its stem (``a.png`` -> ``a``) unless that would equal
    another file's id; then it is the whole name with dots as ``_``
    (``a.png`` -> ``a_png``), and if even that is taken, that plus ``_2``,
    ``_3``, ... (the first file in order keeps the plain form). Ids are
    compared ignoring case (case-insensitive file systems) and made safe with
    :func:`~ilo_pl.problem.safe_problem_id`. They depend on the names and
    their order (which file is "first" and keeps the plain form, and the
    numbering): :class:`ImageFolder` passes them sorted, so a folder with the
    same files always gives the same ids, while adding or removing a file can
    change the ids of files whose stems clash with it.

    >>> folder_ids(["a.jpg", "a.png", "a_png.bmp", "b.png"])
    ['a_jpg', 'a_png', 'a_png_bmp', 'b']
    """
    stems = [safe_problem_id(Path(n).stem) for n in names]
    full = [safe_problem_id(n.replace(".", "_")) for n in names]
    ids = list(stems)
    long_form = [False] * len(names)
    while True:
        groups: Dict[str, List[int]] = {}
        for i, pid in enumerate(ids):
            groups.setdefault(pid.casefold(), []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return ids
        bumped = False
        for group in clashes:
            for i in group:  # first resort: the whole file name
                if not long_form[i]:
                    ids[i], long_form[i], bumped = full[i], True, True
        if bumped:
            continue
        taken = {pid.casefold() for pid in ids}
        for group in clashes:  # whole names clash too (a.b.png, a_b.png): number all but the first
            for i in group[1:]:
                k = 2
                while True:
                    suffix = f"_{k}"
                    base = full[i].encode("utf-8")[: MAX_ID_BYTES - len(suffix)].decode("utf-8", "ignore")
                    cand = base + suffix
                    if cand.casefold() not in taken:
                        break
                    k += 1
                ids[i] = cand
                taken.add(cand.casefold())


def problem_seed(seed: int, index: int) -> int:
    """The seed of problem ``index`` in a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(index)) % (2**62)


def read_class_labels(path: Union[str, "os.PathLike[str]"]) -> Dict[str, int]:
    """The class of each image named in a labels CSV: ``{file name: label}``.

    The file has two columns, the image's file name and its class (a whole
    number); further columns are ignored. A first row whose class is not a
    whole number is a header (e.g. ``file,label``). A name may carry folders
    (``images/cat_01.png``): only its last part, the file name, is kept.
    Blank lines are skipped::

        file,label
        cat_01.png,3
        dog_07.png,5

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the line, for a row without two cells, a class that
            is not a whole number, or a file listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"class labels file {path} does not exist (give data.class_labels a CSV of file,label rows)"
        )
    out: Dict[str, int] = {}
    where: Dict[str, int] = {}  # line of each name, for the duplicate message
    first = True
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        for line, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) < 2 or not cells[0]:
                raise ValueError(f"{path}, line {line}: expected `file,label`; got {','.join(row)!r}")
            header, first = first, False
            try:
                label = int(cells[1])
            except ValueError:
                if header:
                    continue
                raise ValueError(
                    f"{path}, line {line}: the class of {cells[0]!r} must be a whole number; got {cells[1]!r}"
                ) from None
            name = PurePosixPath(cells[0].replace("\\", "/")).name
            if name in out:
                raise ValueError(
                    f"{path}, line {line}: {name!r} is listed twice (also on line {where[name]}); "
                    "give each image one class"
                )
            out[name], where[name] = label, line
    if not out:
        raise ValueError(f"{path} lists no image (expected `file,label` rows)")
    return out


class ProblemSource(abc.ABC):
    """An indexed collection of problems (ground-truth images, or none)."""

    def bind(self, generator: torch.nn.Module) -> None:
        """Give the source the generator (for sources that draw from it)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of problems."""

    @abc.abstractmethod
    def name(self, index: int) -> str:
        """A file-name-safe id for problem ``index``."""

    @abc.abstractmethod
    def load(self, index: int, image_shape: Tuple[int, int, int], seed: int) -> Tensor:
        """The ground-truth image ``[C, H, W]`` in ``[-1, 1]`` of problem ``index``."""

    def describe(self, index: int) -> str:
        """Problem ``index`` for messages: its file where it has one (default: its id)."""
        return f"problem {self.name(index)!r} of {type(self).__name__}"

    def label_key(self, index: int) -> str:
        """The name a class labels file lists problem ``index`` under (default: its id)."""
        return self.name(index)

    def fingerprint(self) -> Dict[str, object]:
        """A JSON-able description of the problems (what a resumed run must find unchanged).

        Default: the class and every problem's id. Sources whose problems can
        change under one id (files on disk) override it.
        """
        return {"source": f"{type(self).__module__}.{type(self).__qualname__}",
                "ids": [self.name(i) for i in range(len(self))]}


class ImageFolder(ProblemSource):
    """Every image file directly in a folder (sorted by name), or one image file.

    Files that cannot be used are skipped with a warning naming them and why,
    and listed in :attr:`skipped` (:class:`~ilo_pl.callbacks.ResultWriter`
    writes them to the run folder's ``skipped_inputs.csv``): files that are
    not readable images, and float images holding NaN or infinite pixels
    (no observation can be made of them). The other images are solved.
    Grayscale, RGBA and 16-bit images are converted to RGB.

    Args:
        path: the folder, or a single image file (one problem).
        resize: policy for images whose size differs from the generator's:
            ``"center_crop"`` (default), ``"resize"`` or ``"error"``.
        exclude: files of the folder that are not problems and are left out
            silently (the class labels file, when it lies beside the images).

    Attributes:
        files: the usable image files, in problem order.
        skipped: ``(file, reason)`` for each file left out.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it holds no usable image (an image file given as
            ``path`` that is not usable: naming it and why).
    """

    def __init__(
        self, path: Union[str, Path], resize: str = "center_crop", exclude: Sequence[Union[str, Path]] = ()
    ) -> None:
        self.path = Path(path)
        self.resize = resize
        if self.path.is_file():
            files = [self.path]
        elif self.path.is_dir():
            left_out = {Path(p).resolve() for p in exclude}
            files = sorted(p for p in self.path.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.resolve() not in left_out)
        else:
            raise FileNotFoundError(
                f"{self.path} does not exist: give `data` a folder of images, an image file or 'samples'"
            )
        self.files: List[Path] = []
        self.skipped: List[Tuple[Path, str]] = []
        for p in files:
            why = unusable_image(p)
            if why is None:
                self.files.append(p)
            else:
                self.skipped.append((p, why))
                if p != self.path:  # a single file given as data is an error (below), not a skip
                    warnings.warn(f"skipping {p}: {why}; it is not solved", stacklevel=2)
        if not self.files:
            if self.path.is_file():
                raise ValueError(f"{self.path} cannot be solved: {self.skipped[0][1]}")
            why = "".join(f"; {p.name}: {reason}" for p, reason in self.skipped[:5])
            raise ValueError(
                f"no usable image in {self.path} (looked for {', '.join(IMAGE_SUFFIXES)}{why}); "
                "point `data` at a folder of images or an image file"
            )
        self._ids = folder_ids([p.name for p in self.files])

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self._ids[index]

    def fingerprint(self) -> Dict[str, object]:
        """The folder's readable files: name, size and ``mtime_ns``, in problem order.

        No file is read, so this is cheap for any folder size. A resumed run
        compares it with the one it recorded: an added, removed or renamed
        file (which shifts problem indices) or a size change is refused; a
        file whose only change is its modification time is accepted with a
        warning, since its contents cannot be compared (see
        :func:`ilo_pl.manifest.compare_manifests`).
        """
        files = []
        for p in self.files:
            st = p.stat()
            files.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return {"source": "ImageFolder", "files": files}

    def load(self, index: int, image_shape: Tuple[int, int, int], seed: int) -> Tensor:
        return load_image(self.files[index], size=image_shape[1:], policy=self.resize)

    def describe(self, index: int) -> str:
        return f"{self.files[index]} (problem {self.name(index)!r})"

    def label_key(self, index: int) -> str:
        """The image's file name (what a labels CSV lists)."""
        return self.files[index].name


def unusable_image(path: Path) -> Optional[str]:
    """Why the file ``path`` cannot be a problem's image, or ``None`` if it can.

    Every file is checked by PIL's ``verify`` (no pixel is decoded); float
    images (PIL mode ``F``, e.g. 32-bit TIFFs), the only kind that can hold
    NaN or infinite values, are decoded and their pixels checked.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            im.verify()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused alike
        return f"not a readable image ({type(exc).__name__})"
    if mode != "F":
        return None  # integer pixels are always finite
    try:
        with Image.open(path) as im:
            arr = np.asarray(im, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - verify passes some files that do not decode
        return f"not a readable image ({type(exc).__name__})"
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        return f"{bad} of its {arr.size} pixels are NaN or infinite"
    return None


class SampleFaces(ProblemSource):
    """Two public-domain portrait photos shipped with scikit-image and matplotlib.

    The face of ``astronaut`` (scikit-image) and of ``grace_hopper``
    (matplotlib), cropped to the DCGAN's face framing: the offline demo data.
    """

    def __init__(self, names: Sequence[str] = tuple(SAMPLE_FACES)) -> None:
        unknown = [n for n in names if n not in SAMPLE_FACES]
        if unknown:
            raise ValueError(f"unknown sample faces {unknown}; choose from {sorted(SAMPLE_FACES)}")
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int, image_shape: Tuple[int, int, int], seed: int) -> Tensor:
        import numpy as np
        from PIL import Image

        origin, box = SAMPLE_FACES[self.names[index]]
        if origin == "skimage":
            import skimage.data

            arr = skimage.data.astronaut()
        else:
            import matplotlib.cbook

            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
                arr = np.asarray(Image.open(f).convert("RGB"))
        im = Image.fromarray(arr).crop(box).resize(image_shape[1:][::-1], Image.LANCZOS)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1) * 2 - 1


class GeneratorSamples(ProblemSource):
    """Ground truth drawn from the generator itself (for tests and theory checks).

    * in range: ``x = G(z*)``;
    * out of range: ``x = G2(G1(z*) + delta)`` at ``split``, with ``delta``
      sparse: ``sparsity`` of the state's entries non-zero, each
      ``magnitude`` times the state's standard deviation, random sign.

    Args:
        num: number of problems.
        split: where the deviation is added (0 = in range).
        sparsity: fraction of non-zero entries of ``delta``.
        magnitude: size of each non-zero entry, in units of the state's std.
    """

    def __init__(self, num: int = 4, split: int = 0, sparsity: float = 0.01, magnitude: float = 5.0) -> None:
        if num < 1:
            raise ValueError("GeneratorSamples needs num >= 1")
        self.num, self.split, self.sparsity, self.magnitude = int(num), int(split), float(sparsity), float(magnitude)
        self.generator = None
        #: Each problem's class for a class-conditional generator (set by the data module from
        #: its ``class_labels``; ``None``: the generator's default class).
        self.labels: Optional[List[int]] = None

    def bind(self, generator: torch.nn.Module) -> None:
        generator.check_split(self.split)
        self.generator = generator

    def __len__(self) -> int:
        return self.num

    def name(self, index: int) -> str:
        kind = "inrange" if self.split == 0 else f"outrange{self.split}"
        return f"g{index:04d}_{kind}"

    def fingerprint(self) -> Dict[str, object]:
        return {"source": "GeneratorSamples", "num": self.num, "split": self.split,
                "sparsity": self.sparsity, "magnitude": self.magnitude}

    @torch.no_grad()
    def load(self, index: int, image_shape: Tuple[int, int, int], seed: int) -> Tensor:
        if self.generator is None:
            raise RuntimeError("GeneratorSamples is not bound to a generator (call bind)")
        g = torch.Generator().manual_seed(seed + 101)  # not the solver's init seed
        label = None if self.labels is None else self.labels[index]
        return draw_from_generator(self.generator, g, self.split, self.sparsity, self.magnitude, label)[0].cpu()


@torch.no_grad()
def draw_from_generator(
    generator, g: torch.Generator, split: int = 0, sparsity: float = 0.01, magnitude: float = 5.0,
    label: Optional[int] = None,
) -> Tensor:
    """``G(z*)`` (split 0) or ``G2(G1(z*) + delta)`` with a sparse ``delta`` at ``split``; ``[1, C, H, W]``.

    ``label``: the class of a class-conditional generator's draw (``None``: its default).
    """
    z = generator.init_variables(1, g) if label is None else generator.init_variables(1, g, labels=[label])
    if split == 0:
        return generator.render(z, 0)
    state = generator.advance(z, 0, split)
    groups = generator.groups(split)
    for name, value in state.items():
        if groups[name] != "state":
            continue
        flat = value.flatten()
        k = max(1, int(round(sparsity * flat.numel())))
        idx = torch.randperm(flat.numel(), generator=g)[:k]
        signs = torch.randint(0, 2, (k,), generator=g).float() * 2 - 1
        delta = torch.zeros_like(flat)
        delta[idx] = (signs * magnitude * float(flat.std())).to(delta)
        state[name] = (flat + delta).view_as(value)
    return generator.render(state, split)


class _RepeatSampler(Sampler):
    """Yields batch index ``j`` ``repeats`` times in a row, for each batch."""

    def __init__(self, num_batches: int, repeats: int) -> None:
        self.num_batches, self.repeats = num_batches, repeats

    def __iter__(self) -> Iterator[int]:
        for j in range(self.num_batches):
            for _ in range(self.repeats):
                yield j

    def __len__(self) -> int:
        return self.num_batches * self.repeats


class _BatchDataset(Dataset):
    """Item ``j`` is problem batch ``j``; the last one is cached (it comes once per step)."""

    def __init__(self, dm: "InverseProblemDataModule", batches: List[List[int]]) -> None:
        self.dm, self.batches = dm, batches
        self._cache: Optional[Tuple[int, ProblemBatch]] = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> ProblemBatch:
        if self._cache is None or self._cache[0] != j:
            self._cache = (j, self.dm.make_batch(self.batches[j]))
        return self._cache[1]


def _identity(x):  # noqa: ANN001, ANN202 - a picklable collate_fn
    return x


def problem_loader(batches: Sequence[ProblemBatch], trainer: "pl.Trainer") -> DataLoader:
    """The loader of a fit: each problem batch once per optimizer step of its solve, in order.

    Args:
        batches: problem batches (a list, or a dataset that makes them on demand).
        trainer: the trainer (its module's ``steps_per_problem`` and gradient accumulation).
    """
    repeats = trainer.lightning_module.steps_per_problem * trainer.accumulate_grad_batches
    return DataLoader(
        batches, sampler=_RepeatSampler(len(batches), repeats), batch_size=None, collate_fn=_identity, num_workers=0
    )


class ProblemBatches(pl.LightningDataModule):
    """A data module over problem batches that already exist (what :func:`ilo_pl.api.solve` fits).

    Args:
        batches: the problem batches, solved in order.
    """

    def __init__(self, batches: Sequence[ProblemBatch]) -> None:
        super().__init__()
        self.batches = list(batches)
        if not all(isinstance(b, ProblemBatch) for b in self.batches):
            raise TypeError("ProblemBatches takes ilo_pl.problem.ProblemBatch objects")

    def train_dataloader(self) -> DataLoader:
        return problem_loader(self.batches, self.trainer)


class InverseProblemDataModule(pl.LightningDataModule):
    """Feeds (observation, operator, ground truth, id) problem batches to :class:`~ilo_pl.modules.ILOModule`.

    Args:
        operator: how to build each problem's operator (an
            :class:`~ilo_pl.operators.base.OperatorSpec`, e.g. ``BoxMask``).
        data: a folder of images or one image file (see :class:`ImageFolder`),
            ``"samples"`` (the built-in sample faces), or a :class:`ProblemSource`.
        batch_size: problems solved together (each as if alone).
        seed: the run's seed (see :func:`problem_seed`).
        resize: policy for image files of another size (see :func:`ilo_pl.io.load_image`).
        limit: solve only the first ``limit`` problems.
        class_labels: for class-conditional generators: one class (an int) for
            every problem, or a CSV file of ``file,label`` rows
            (:func:`read_class_labels`) naming every image's class by its file
            name (the problem id for the built-in samples and generator draws);
            a labels file inside the image folder is not taken for an image.
            ``None``: the generator's default (``class_label``). Checked when
            the generator is known: labels for an unconditional generator, a
            class out of its range and an image the file does not list are
            refused.
    """

    def __init__(
        self,
        operator: OperatorSpec,
        data: Union[str, ProblemSource] = "samples",
        batch_size: int = 1,
        seed: int = 0,
        resize: str = "center_crop",
        limit: Optional[int] = None,
        class_labels: Union[int, str, None] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if not isinstance(operator, OperatorSpec):
            raise TypeError(
                f"operator must be an OperatorSpec (e.g. ilo_pl.operators.BoxMask); got {type(operator).__name__}"
            )
        self.operator_spec = operator
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.resize = resize
        self.limit = limit
        if isinstance(class_labels, bool) or not isinstance(class_labels, (int, str, os.PathLike, type(None))):
            raise TypeError(
                f"class_labels must be an int (one class for every problem) or a CSV file of file,label rows; "
                f"got {class_labels!r}"
            )
        self.class_labels = class_labels
        #: Each solved problem's class (problem id -> label) once bound, for the run manifest;
        #: ``None`` without ``class_labels``.
        self.class_label_table: Optional[Dict[str, int]] = None
        self._labels: Optional[List[int]] = None  # by problem index
        self.source: Optional[ProblemSource] = None
        self.image_shape: Optional[Tuple[int, int, int]] = None
        #: Problem indices to leave out (finished in an earlier, resumed run).
        self.skip: set = set()
        self._shared_op: Optional[Operator] = None
        # With sharding or resuming a rank may have no problem left; that is not an error.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    # -- set-up ---------------------------------------------------------------
    def make_source(self) -> ProblemSource:
        """The problem source named by ``data``."""
        if isinstance(self.data, ProblemSource):
            return self.data
        if self.data == "samples":
            return SampleFaces()
        exclude = [] if self.class_labels is None or isinstance(self.class_labels, int) else [self.class_labels]
        return ImageFolder(self.data, resize=self.resize, exclude=exclude)

    def setup(self, stage: str = "fit") -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "generator"):
            raise RuntimeError("InverseProblemDataModule must be used with an ILOModule in a Trainer")
        self.bind(module.generator)

    def bind(self, generator) -> None:  # noqa: ANN001
        """Attach the generator: fixes the image shape and binds generator-drawn sources."""
        self.image_shape = tuple(generator.image_shape)
        self.source = self.make_source()
        self.source.bind(generator)
        self._bind_labels(generator)

    def _bind_labels(self, generator) -> None:  # noqa: ANN001
        """Each problem's class from ``class_labels``, checked against the generator (before any solve)."""
        self._labels = self.class_label_table = None
        classes = int(getattr(generator, "num_classes", 0))
        name = type(generator).__name__
        if self.class_labels is None:
            check = getattr(generator, "check_labels", None)
            if classes > 0 and check is not None:
                check(None, 1)  # a conditional generator without a default class says how to give one
            return
        if classes == 0:
            raise ValueError(
                f"class_labels ({self.class_labels!r}) are given, but the generator ({name}) is unconditional "
                "(it has no class input); leave data.class_labels out"
            )
        n = len(self.source) if self.limit is None else min(len(self.source), int(self.limit))
        keys = [self.source.label_key(i) for i in range(n)]
        if isinstance(self.class_labels, int):
            labels = [self.class_labels] * n
            where = "data.class_labels"
        else:
            table = read_class_labels(self.class_labels)
            missing = [k for k in keys if k not in table]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise ValueError(
                    f"{self.class_labels} gives no class for {len(missing)} of the {n} problems: {shown}; "
                    "add a `file,label` row for each"
                )
            labels = [table[k] for k in keys]
            where = str(self.class_labels)
        for key, label in zip(keys, labels):
            if not 0 <= label < classes:
                raise ValueError(
                    f"{where}: class {label} of {key!r} is out of range: the generator ({name}) has {classes} "
                    f"classes (0..{classes - 1})"
                )
        self._labels = labels
        self.class_label_table = {self.source.name(i): label for i, label in enumerate(labels)}
        if isinstance(self.source, GeneratorSamples):
            self.source.labels = labels  # ground truth drawn from each problem's own class

    def problem_indices(self, rank: int = 0, world_size: int = 1) -> List[int]:
        """This rank's share of the problems (round-robin), without skipped ones."""
        n = len(self.source)
        if self.limit is not None:
            n = min(n, int(self.limit))
        return [i for i in range(n) if i % world_size == rank and i not in self.skip]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        indices = self.problem_indices(trainer.global_rank, trainer.world_size)
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return problem_loader(_BatchDataset(self, batches), trainer)

    # -- problems ---------------------------------------------------------------
    def make_batch(self, indices: Sequence[int]) -> ProblemBatch:
        """Load, build operators for, and observe the problems ``indices``.

        The batch's ``target`` (ground truth) is the loaded images, or ``None``
        for a spec whose observation does not measure them
        (``OperatorSpec.ground_truth = False``: classifier guidance).

        Raises:
            ValueError: naming the problem (its file), if its image holds NaN or
                infinite values.
        """
        if self.source is None:
            raise RuntimeError("call bind(generator) (or setup) before make_batch")
        shape = self.image_shape
        spec = self.operator_spec
        ids, targets, ops, ys, seeds = [], [], [], [], []
        for i in indices:
            s = problem_seed(self.seed, i)
            x = self.source.load(i, shape, s)[None].float()
            if not torch.isfinite(x).all():  # (ImageFolder skips such files up front)
                bad = int((~torch.isfinite(x)).sum())
                raise ValueError(
                    f"{self.source.describe(i)}: {bad} of its {x.numel()} pixel values are NaN or infinite; "
                    "no observation can be made of it: fix or remove it"
                )
            if spec.shared:
                if self._shared_op is None:
                    self._shared_op = spec.build(shape, problem_seed(self.seed, -1))
                op = self._shared_op
            else:
                op = spec.build(shape, s, name=self.source.name(i))
            y = spec.observe(op, x, torch.Generator().manual_seed(s + 1))
            op.check_observation(y, x)
            ids.append(self.source.name(i))
            targets.append(x)
            ops.append(op)
            ys.append(y)
            seeds.append(s)
        operator = ops[0] if spec.shared else Operator.stack(ops)
        return ProblemBatch(
            ids=ids,
            observation=torch.cat(ys, 0),
            operator=operator,
            seeds=seeds,
            # A data image that the observation does not measure (classifier guidance) is no ground truth.
            target=torch.cat(targets, 0) if getattr(spec, "ground_truth", True) else None,
            indices=list(indices),
            labels=None if self._labels is None else [self._labels[i] for i in indices],
        )

