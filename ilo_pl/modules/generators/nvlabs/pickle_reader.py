"""A safe reader for NVIDIA's network pickles (StyleGAN2-ADA, StyleGAN3 snapshots).

NVIDIA's snapshots (``network-snapshot-*.pkl``) pickle each network as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose ``meta``
carries the *source code* of the network's module (``module_src``), the class
name and the module's ``__dict__`` (``state``). NVIDIA's own loader executes
``module_src``: opening a downloaded model runs whatever it carries.

:func:`read_network_pickle` never runs anything from the file. It is a
restricted :class:`pickle.Unpickler` whose :meth:`~_SafeUnpickler.find_class`
returns ilo-pl's own inert stand-ins for exactly the globals these files use
(:data:`ALLOWED_GLOBALS`) and refuses every other global with a
:class:`NetworkPickleError` that names it:

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> a function that
  returns a :class:`PersistentRecord` (``class_name`` and ``state``); the
  ``module_src`` string is dropped unread (never executed, compiled or
  imported);
* ``torch.storage._load_from_bytes`` -> ``torch.load(io.BytesIO(payload),
  weights_only=True)`` (each payload is a legacy ``torch.save`` stream of one
  storage);
* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` -> tensor views
  of those storages (plain tensors; backward hooks must be empty);
* ``numpy`` scalars and small arrays -> rebuilt from their raw bytes, refusing
  the ``object`` dtype;
* ``collections.OrderedDict``, ``builtins.set``, ``numpy.dtype`` and
  ``dnnlib.util.EasyDict`` (a plain ``dict`` subclass here);
* ``_codecs.encode`` (how protocol 2 spells ``bytes``) -> latin-1 text to bytes only.

Protocol-2 files spell Python 3 names the Python 2 way (``__builtin__.set``);
they are mapped with :mod:`_compat_pickle` first, so a refusal names the
Python 3 global.

Every opcode that calls something (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``,
``INST``, ``OBJ``, ``BUILD`` via ``__setstate__``) can only call an object
that came out of :meth:`find_class` (or a method of an object built from
one), so the allow-list is the whole attack surface; ``persistent_load``
refuses every persistent id (these files use none), and the copyreg extension
opcodes resolve through ``find_class`` too.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ALLOWED_GLOBALS",
    "EasyDict",
    "NetworkPickleError",
    "PersistentRecord",
    "is_network_pickle",
    "read_network_pickle",
    "record_state_dict",
    "take_generator",
    "walk",
]

PathLike = Union[str, "os.PathLike[str]"]


class NetworkPickleError(ValueError):
    """A file that is not a readable NVIDIA network pickle, or one that references a refused global.

    Attributes:
        path: the file (``None`` for an in-memory stream).
        refused: ``"module.name"`` of the refused global, or ``None``.
    """

    def __init__(self, message: str, path: Optional[Path] = None, refused: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.refused = refused


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a ``dict`` whose items also read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class PersistentRecord:
    """An inert record of one persistent network object: its class name and recorded ``__dict__``.

    Attributes:
        class_name: e.g. ``"Generator"``, ``"SynthesisLayer"``.
        state: the module's ``__dict__`` as pickled (``_parameters``,
            ``_buffers``, ``_modules``, ``_init_kwargs``, attributes ...).
        version: the persistence format version in the file (6 in known files).
        module_src_chars: length of the embedded source (kept only as a number).
    """

    class_name: str
    state: Dict[str, Any] = field(repr=False)
    version: Optional[int] = None
    module_src_chars: int = 0

    def attr(self, name: str, default: Any = None) -> Any:
        """A recorded attribute, numpy scalars turned into Python numbers."""
        value = self.state.get(name, default)
        if isinstance(value, np.generic):
            return value.item()
        return value

    @property
    def init_kwargs(self) -> Dict[str, Any]:
        """The recorded constructor keyword arguments (``_init_kwargs``)."""
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> Tuple[Any, ...]:
        """The recorded constructor positional arguments (``_init_args``)."""
        return tuple(self.state.get("_init_args") or ())

    def child(self, name: str) -> Optional["PersistentRecord"]:
        """The child module ``name`` (``None`` if absent or recorded as ``None``)."""
        return (self.state.get("_modules") or {}).get(name)

    def children(self) -> Iterator[Tuple[str, "PersistentRecord"]]:
        """The non-``None`` child modules, in order."""
        for name, mod in (self.state.get("_modules") or {}).items():
            if mod is not None:
                yield name, mod


# ----------------------------------------------------------------------------- inert stand-ins
def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise NetworkPickleError(
            "a persistent object in the pickle is not a recorded class instance (meta type "
            f"{meta.get('type') if isinstance(meta, dict) else type(meta).__name__!r}); refusing it"
        )
    state = meta.get("state")
    if not isinstance(state, dict):
        raise NetworkPickleError(f"persistent object {meta['class_name']!r} has no recorded state dict")
    src = meta.get("module_src")
    # module_src is dropped here: it is never executed, compiled or imported.
    return PersistentRecord(
        class_name=meta["class_name"],
        state=state,
        version=meta.get("version"),
        module_src_chars=len(src) if isinstance(src, str) else 0,
    )


def _load_from_bytes(payload: Any) -> Any:
    if not isinstance(payload, (bytes, bytearray)):
        raise NetworkPickleError(f"a storage payload is {type(payload).__name__}, not bytes")
    try:
        return torch.load(io.BytesIO(bytes(payload)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        # Name what was refused, not torch's advice (which suggests weights_only=False).
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise NetworkPickleError(
            f"a tensor storage payload was refused by torch's weights-only loader{what}; "
            "this file is not a network pickle ilo-pl can read"
        ) from None


def _as_typed(storage: Any) -> Tuple[torch.UntypedStorage, torch.dtype]:
    if isinstance(storage, torch.TypedStorage):
        return storage._untyped_storage, storage.dtype
    raise NetworkPickleError(f"a tensor is built on {type(storage).__name__}, not a tensor storage")


def _rebuild_tensor_v2(
    storage: Any, storage_offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], requires_grad: bool = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> Tensor:
    untyped, dtype = _as_typed(storage)
    if backward_hooks:
        raise NetworkPickleError("a tensor in the pickle carries backward hooks; refusing it")
    t = torch.empty((0,), dtype=dtype)
    t.set_(untyped, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    return t


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise NetworkPickleError(f"a parameter is built on {type(data).__name__}, not a tensor")
    if backward_hooks:
        raise NetworkPickleError("a parameter in the pickle carries backward hooks; refusing it")
    return data


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise NetworkPickleError(f"a numpy scalar of dtype {dtype!r} is refused (only plain numeric dtypes)")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise NetworkPickleError("a numpy scalar's payload is not its raw bytes")
    return np.frombuffer(bytes(data), dtype=dtype)[0].copy()


class _ArrayBuilder:
    """Inert stand-in for ``numpy.ndarray`` during unpickling; :meth:`__setstate__` builds the array."""

    def __init__(self) -> None:
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise NetworkPickleError("a numpy array's pickled state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise NetworkPickleError(f"a numpy array of dtype {dtype!r} is refused (only plain numeric dtypes)")
        if not isinstance(data, (bytes, bytearray)):
            raise NetworkPickleError("a numpy array's payload is not raw bytes")
        arr = np.frombuffer(bytes(data), dtype=dtype).copy()
        self.array = arr.reshape(tuple(int(s) for s in shape), order="F" if fortran else "C")


class _NDArrayClass:
    """Marker returned for ``numpy.ndarray`` (only usable as ``_reconstruct``'s first argument)."""


def _numpy_reconstruct(cls: Any, shape: Any = (0,), dtype_code: Any = b"b") -> _ArrayBuilder:
    if cls is not _NDArrayClass:
        raise NetworkPickleError("numpy _reconstruct is only allowed for numpy.ndarray")
    return _ArrayBuilder()


def _codecs_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Protocol 2 has no bytes opcode: bytes are pickled as ``_codecs.encode(str, "latin1")``.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise NetworkPickleError("_codecs.encode is only allowed for latin-1 text (protocol-2 bytes)")
    return text.encode("latin1")


def _numpy_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args[:1]) if args else np.dtype("f8")
    if dt.hasobject:
        raise NetworkPickleError("numpy object dtypes are refused")
    return dt


#: The globals NVIDIA's network pickles reference, each with ilo-pl's inert stand-in.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy", "dtype"): _numpy_dtype,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): _NDArrayClass,
    ("_codecs", "encode"): _codecs_encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS` (to inert stand-ins)."""

    def __init__(self, file: Any, path: Optional[Path]) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        # Protocol-2 files spell Python 3 names the Python 2 way (``__builtin__.set``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            pass
        where = f" {self._path}" if self._path is not None else ""
        raise NetworkPickleError(
            f"refusing global {module}.{name} in network pickle{where}: NVIDIA network pickles only "
            f"reference {sorted('.'.join(k) for k in ALLOWED_GLOBALS)}; nothing from the file was run",
            path=self._path,
            refused=f"{module}.{name}",
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise NetworkPickleError(
            f"refusing persistent id {str(pid)[:60]!r}: NVIDIA network pickles use none", path=self._path
        )


def _finish(obj: Any, seen: Optional[Dict[int, Any]] = None) -> Any:
    """Replace numpy array builders by their arrays, recursively (in place for containers)."""
    if seen is None:
        seen = {}
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _ArrayBuilder):
        seen[key] = obj.array
        return obj.array
    seen[key] = obj
    if isinstance(obj, PersistentRecord):
        _finish(obj.state, seen)
    elif isinstance(obj, dict):
        for k in list(obj.keys()):
            obj[k] = _finish(obj[k], seen)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _finish(v, seen)
    elif isinstance(obj, tuple):
        new = tuple(_finish(v, seen) for v in obj)
        seen[key] = new
        return new
    return obj


def read_network_pickle(source: Union[PathLike, io.BufferedIOBase, bytes]) -> Dict[str, Any]:
    """Read an NVIDIA network pickle without running anything from it.

    Args:
        source: a path, an open binary file, or the bytes of the file.

    Returns:
        The unpickled top-level object (a snapshot dict ``{G, D, G_ema,
        augment_pipe, training_set_kwargs}``, or whatever the file holds),
        with every network object as a :class:`PersistentRecord`.

    Raises:
        FileNotFoundError: if the path does not exist.
        NetworkPickleError: a refused global (named in the message and in
            ``refused``), a persistent id, or a file that is not a pickle.
    """
    path: Optional[Path] = None
    if isinstance(source, (bytes, bytearray)):
        stream: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"network pickle {path} does not exist")
        stream = io.BytesIO(path.read_bytes())
    else:
        stream = source
    try:
        obj = _SafeUnpickler(stream, path).load()
    except NetworkPickleError as err:
        if err.path is None and path is not None:
            err.path = path
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        where = f" {path}" if path is not None else ""
        raise NetworkPickleError(
            f"could not read network pickle{where} ({type(err).__name__}: {str(err)[:200]}); "
            "expected an NVIDIA StyleGAN2-ADA/StyleGAN3 network pickle",
            path=path,
        ) from None
    return _finish(obj)


def is_network_pickle(path: PathLike) -> bool:
    """Whether ``path`` looks like a (non-zip) pickle stream rather than a ``torch.save`` zip archive."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] >= 2


def take_generator(obj: Any, key: str = "G_ema", path: Optional[PathLike] = None) -> PersistentRecord:
    """The generator record of a snapshot dict (``G_ema`` by default), or the record itself.

    Raises:
        NetworkPickleError: if the snapshot lacks ``key`` or it is not a network.
    """
    if isinstance(obj, PersistentRecord):
        return obj
    if isinstance(obj, dict):
        if key not in obj:
            raise NetworkPickleError(
                f"network pickle {path or ''} has no {key!r} entry (it holds {sorted(map(str, obj))})",
                path=Path(path) if path else None,
            )
        rec = obj[key]
        if isinstance(rec, PersistentRecord):
            return rec
    raise NetworkPickleError(f"network pickle {path or ''}: {key!r} is not a network object")


def record_state_dict(record: PersistentRecord, prefix: str = "") -> "collections.OrderedDict[str, Tensor]":
    """The ``state_dict`` of a recorded module tree (parameters, then persistent buffers, then children)."""
    out: "collections.OrderedDict[str, Tensor]" = collections.OrderedDict()
    st = record.state
    for name, t in (st.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for name, t in (st.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in record.children():
        if not isinstance(child, PersistentRecord):
            raise NetworkPickleError(f"child module {prefix + name} is not a recorded network object")
        out.update(record_state_dict(child, prefix + name + "."))
    return out


def walk(record: PersistentRecord, prefix: str = "") -> Iterator[Tuple[str, PersistentRecord]]:
    """``(dotted name, record)`` of a module tree, parents first."""
    yield prefix.rstrip("."), record
    for name, child in record.children():
        yield from walk(child, prefix + name + ".")

