"""Tests of the safe reader of NVIDIA network pickles (``ilo_pl.modules.generators.nvlabs.pickle_reader``).

* the three fixture snapshots of ``../shared/fixtures/nvlabs`` read (protocols 3 and
  4, numpy 1 and 2 spellings, with and without D and the augment pipe) and the
  trap in their embedded source never fires;
* the reader takes ``G_ema`` and its state dict matches the manifest's keys and shapes;
* crafted pickles that reference ``os.system``, ``builtins.eval``,
  ``subprocess.Popen`` (and friends) are refused with the global named, and run nothing;
* pickles that only play tricks inside ``module_src`` run nothing;
* the inert records re-pickle and read back at protocols 2 to 5.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from ilo_pl.modules.generators.nvlabs.pickle_reader import (
    EasyDict,
    NetworkPickleError,
    PersistentRecord,
    read_network_pickle,
    record_state_dict,
    take_generator,
)

NV = FIXTURES / "nvlabs"
NAMES = ("stylegan2ada_tiny_shared", "stylegan2ada_tiny_shared_legacy", "stylegan3t_tiny")
TRAP = "EMBEDDED_PICKLE_CODE_RAN"


def _pkl(name: str) -> Path:
    path = NV / f"{name}.pkl"
    if not path.is_file():
        pytest.fail(f"missing fixture {path}: the shared fixtures must be at ../shared/fixtures/nvlabs")
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty working directory and check afterwards that nothing was written there."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / TRAP).exists(), "the embedded module_src ran"
    assert list(tmp_path.iterdir()) == [], f"reading wrote files: {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_pickles_read_without_running_the_embedded_source(name: str, in_tmp: Path) -> None:
    snap = read_network_pickle(_pkl(name))
    manifest = json.loads((NV / f"{name}_manifest.json").read_text())
    assert set(snap) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    g = take_generator(snap)
    assert g is snap["G_ema"] and g.class_name == "Generator"
    assert g.module_src_chars > 0  # the source was there, and only its length is kept
    sd = record_state_dict(g)
    want = [(k, tuple(s)) for k, s, _ in manifest["G_ema_state_dict"]]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == want
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert not any(isinstance(v, torch.nn.Parameter) for v in sd.values())
    # G and G_ema share keys but not values.
    sd_g = record_state_dict(snap["G"])
    assert list(sd_g) == list(sd)
    assert any(not torch.equal(sd_g[k], sd[k]) for k in sd)
    assert g.attr("num_ws") == manifest["derived"]["num_ws"] if "derived" in manifest else True
    assert isinstance(g.init_kwargs, dict)


def test_legacy_snapshot_has_d_and_augment_pipe_and_numpy1_names(in_tmp: Path) -> None:
    raw = _pkl("stylegan2ada_tiny_shared_legacy").read_bytes()
    assert raw[1] == 3  # protocol 3
    assert b"numpy.core.multiarray" in raw
    snap = read_network_pickle(raw)
    assert isinstance(snap["D"], PersistentRecord) and isinstance(snap["augment_pipe"], PersistentRecord)
    shared = read_network_pickle(_pkl("stylegan2ada_tiny_shared"))
    assert shared["D"] is None and shared["augment_pipe"] is None
    a, b = record_state_dict(snap["G_ema"]), record_state_dict(shared["G_ema"])
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_numpy_scalars_and_arrays_come_back_as_plain_numbers(in_tmp: Path) -> None:
    g = take_generator(read_network_pickle(_pkl("stylegan3t_tiny")))
    inp = g.child("synthesis").child("input")
    assert isinstance(inp.state["size"], np.ndarray) and inp.state["size"].dtype != object
    layer = g.child("synthesis").child("L0_36_32")
    assert isinstance(layer.attr("in_cutoff"), float)
    ada = take_generator(read_network_pickle(_pkl("stylegan2ada_tiny_shared")))
    kw = ada.init_kwargs["mapping_kwargs"]
    assert isinstance(kw, EasyDict) and kw.num_layers == 2


# ----------------------------------------------------------------------------- crafted pickles
class _Evil:
    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return self.func, self.args


EVIL = [
    (os.system, ("touch PWNED",), "os.system" if os.name != "nt" else "nt.system"),
    (builtins.eval, ("open('PWNED', 'w')",), "builtins.eval"),
    (builtins.exec, ("open('PWNED', 'w')",), "builtins.exec"),
    (subprocess.Popen, (["touch", "PWNED"],), "subprocess.Popen"),
    (builtins.getattr, ("abc", "upper"), "builtins.getattr"),
    (builtins.__import__, ("os",), "builtins.__import__"),
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("func,args,named", EVIL, ids=[e[2] for e in EVIL])
def test_refuses_any_other_global_naming_it(func: Any, args: tuple, named: str, protocol: int, in_tmp: Path) -> None:
    module, _, name = named.rpartition(".")
    named = f"{'posix' if module == 'os' and os.name != 'nt' else module}.{name}"
    # Hidden inside a plausible snapshot dict, next to a real tensor.
    payload = pickle.dumps({"G_ema": _Evil(func, args), "w": torch.ones(2)}, protocol=protocol)
    with pytest.raises(NetworkPickleError) as err:
        read_network_pickle(payload)
    assert named in str(err.value) and err.value.refused == named
    assert not (in_tmp / "PWNED").exists()


def test_refuses_protocol0_inst_and_global_opcodes(in_tmp: Path) -> None:
    # Protocol-0 GLOBAL + REDUCE, and INST, both resolve through find_class.
    for raw in (b"cos\nsystem\n(S'touch PWNED'\ntR.", b"(S'touch PWNED'\nios\nsystem\n."):
        with pytest.raises(NetworkPickleError, match=r"os\.system"):
            read_network_pickle(raw)
    assert not (in_tmp / "PWNED").exists()


def test_refuses_persistent_ids_and_non_pickles(in_tmp: Path) -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "pid" if isinstance(obj, str) and obj == "x" else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"a": "x"})
    with pytest.raises(NetworkPickleError, match="persistent id"):
        read_network_pickle(buf.getvalue())
    for raw in (b"", b"not a pickle at all", b"\x80\x04\x95"):
        with pytest.raises(NetworkPickleError):
            read_network_pickle(raw)


def _fake_persistence() -> types.ModuleType:
    """A stand-in ``torch_utils.persistence`` so test pickles reference the real global name."""
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # pragma: no cover - never called by the reader
        raise AssertionError("the reader must not call the file's own reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    return mod


class _Persistent:
    """Pickles like NVIDIA's persistent objects: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, fn: Any, meta: dict) -> None:
        self.fn, self.meta = fn, meta

    def __reduce__(self) -> Any:
        return self.fn, (self.meta,)


@pytest.fixture
def persistence(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    pkg = types.ModuleType("torch_utils")
    mod = _fake_persistence()
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return mod


def _to_persistent(obj: Any, fn: Any) -> Any:
    """Turn read records back into pickle-able persistent objects (recursively)."""
    if isinstance(obj, PersistentRecord):
        state = {k: _to_persistent(v, fn) for k, v in obj.state.items()}
        return _Persistent(fn, {"type": "class", "version": 6, "module_src": "raise SystemExit", "class_name": obj.class_name, "state": state})
    if isinstance(obj, EasyDict):
        return {k: _to_persistent(v, fn) for k, v in obj.items()}
    if isinstance(obj, dict):
        return type(obj)((k, _to_persistent(v, fn)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_persistent(v, fn) for v in obj)
    return obj


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_records_repickle_and_read_back_at_every_protocol(protocol: int, persistence: types.ModuleType, in_tmp: Path) -> None:
    g = take_generator(read_network_pickle(_pkl("stylegan2ada_tiny_shared")))
    raw = pickle.dumps({"G_ema": _to_persistent(g, persistence._reconstruct_persistent_obj)}, protocol=protocol)
    assert raw[1] == protocol
    back = take_generator(read_network_pickle(raw))
    a, b = record_state_dict(g), record_state_dict(back)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert back.attr("num_ws") == 8


def test_module_src_tricks_run_nothing(persistence: types.ModuleType, in_tmp: Path) -> None:
    src = "open('PWNED', 'w').write('ran')\nimport os\nos.system('touch PWNED2')\n"
    meta = {"type": "class", "version": 6, "module_src": src, "class_name": "Generator", "state": {"_modules": {}}}
    rec = read_network_pickle(pickle.dumps(_Persistent(persistence._reconstruct_persistent_obj, meta), protocol=4))
    assert isinstance(rec, PersistentRecord) and rec.module_src_chars == len(src)
    # NVIDIA's other meta type ("module" with a pickled function) is refused, not run.
    bad = dict(meta, type="function")
    with pytest.raises(NetworkPickleError, match="not a recorded class"):
        read_network_pickle(pickle.dumps(_Persistent(persistence._reconstruct_persistent_obj, bad), protocol=4))


def test_refuses_object_dtype_numpy(in_tmp: Path) -> None:
    raw = pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=4)
    with pytest.raises(NetworkPickleError):
        read_network_pickle(raw)


def test_take_generator_names_a_missing_entry(in_tmp: Path) -> None:
    with pytest.raises(NetworkPickleError, match="G_ema"):
        take_generator({"G": None}, "G_ema", "x.pkl")


def test_a_storage_payload_with_other_objects_is_refused_without_unsafe_advice():
    import argparse
    import io

    import torch

    from ilo_pl.modules.generators.nvlabs import pickle_reader

    buf = io.BytesIO()
    torch.save({"args": argparse.Namespace(a=1)}, buf)
    with pytest.raises(pickle_reader.NetworkPickleError, match="argparse.Namespace") as info:
        pickle_reader._load_from_bytes(buf.getvalue())
    assert "weights_only" not in str(info.value)
