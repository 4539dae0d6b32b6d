"""The split-generator contract: :func:`check_split_generator` and a base class for pytest.

ILO relies on a few properties of every :class:`~ilo_pl.modules.generators.base.SplitGenerator`
that its type cannot express. Each property has a name; a generator that breaks one
raises :class:`ContractViolation` (an ``AssertionError``) naming it, with the fix:

================  ==========================================================================
property          what is checked
================  ==========================================================================
``split``         ``render(advance(v, 0, k), k) == render(v, 0)`` at every split ``k``
                  (``G2(G1(v)) == G(v)``), an image ``[B, *image_shape]``, finite
``composition``   ``advance(advance(v, 0, j), j, k) == advance(v, 0, k)`` (entry by entry)
``batch``         every state entry is ``[B, ...]``, and a batch renders each sample as it
                  renders alone, at every split (no operation mixes the problems of a batch)
``init``          ``init_variables(B, torch.Generator().manual_seed(s))`` is reproducible
                  whatever the global RNG, differs between seeds and between samples, and
                  lies on the generator's device
``frozen``        after ``freeze()`` and ``train()`` no module is in training mode and no
                  parameter requires a gradient (ILO optimises the state, never the weights)
``groups``        ``groups(k)`` names exactly the state's entries at every split, each with a
                  known group (:data:`~ilo_pl.modules.generators.base.GROUPS`)
``sphere``        ``sphere_variables(k)`` names entries of the state at ``k``, with distinct
                  dims that exist and leave out the batch dim
``split_range``   ``render`` and ``advance`` refuse a split past ``num_splits`` (``ValueError``)
``autocast``      ``render`` under ``torch.autocast`` (bfloat16 on the CPU, float16 on a GPU)
                  gives a finite image of the right shape, close to the float32 one
================  ==========================================================================

Check a generator once with :func:`check_split_generator`, or run each property as its own
test by subclassing :class:`SplitGeneratorContract` (ilo-pl's DCGAN and StyleGAN-2 tests do;
``docs/stylegan2.md`` shows both).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, ClassVar, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ilo_pl.modules.generators.base import GROUPS, SplitGenerator, State

__all__ = [
    "PROPERTIES",
    "ContractViolation",
    "SplitGeneratorContract",
    "check_property",
    "check_split_generator",
]

DeviceLike = Union[str, torch.device]


class ContractViolation(AssertionError):
    """A generator breaks one property of the split contract.

    Attributes:
        property: the name of the broken property (one of :data:`PROPERTIES`).
    """

    def __init__(self, prop: str, generator: SplitGenerator, message: str) -> None:
        self.property = prop
        super().__init__(f"{type(generator).__name__} breaks the split contract ({prop!r}): {message}")


# ----------------------------------------------------------------------------- helpers
def _device_of(gen: SplitGenerator) -> torch.device:
    """The device of the generator's first parameter or buffer (the CPU if it has none)."""
    for t in itertools.chain(gen.parameters(), gen.buffers()):
        return t.device
    return torch.device("cpu")


def _draw(gen: SplitGenerator, batch: int, seed: int) -> State:
    return gen.init_variables(batch, torch.Generator().manual_seed(seed))


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off on CUDA while comparing: its ~1e-3 rounding differs between batch sizes.

    cuDNN picks other algorithms for other shapes; with TF32 a batch and its samples
    alone would then differ by rounding, not by a broken generator.
    """
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def _splits(gen: SplitGenerator) -> range:
    return range(int(gen.num_splits) + 1)


# ----------------------------------------------------------------------------- the properties
def _check_split(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        full = gen.render(v, 0)
        want = (batch, *gen.image_shape)
        if not isinstance(full, Tensor) or tuple(full.shape) != want:
            got = tuple(full.shape) if isinstance(full, Tensor) else type(full).__name__
            raise ContractViolation(
                "split", gen, f"render(v, 0) gave {got}, not an image [B, *image_shape] = {want}; "
                "render must return [B, C, H, W] with image_shape = (C, H, W)"
            )
        if not torch.isfinite(full).all():
            raise ContractViolation("split", gen, "render(v, 0) is not finite for variables from init_variables")
        for k in _splits(gen):
            err = _max_diff(gen.render(gen.advance(v, 0, k), k), full)
            if not err <= atol:
                raise ContractViolation(
                    "split", gen, f"render(advance(v, 0, {k}), {k}) differs from render(v, 0) by {err:.3g} "
                    f"(atol {atol:g}); G2(G1(v)) must be G(v) at every split: advance(state, 0, k) must run "
                    "exactly the blocks before split k, and render(state, k) the blocks after it"
                )


def _check_composition(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        for k in _splits(gen):
            j = k // 2
            direct = gen.advance(v, 0, k)
            hops = gen.advance(gen.advance(v, 0, j), j, k)
            if set(hops) != set(direct):
                raise ContractViolation(
                    "composition", gen, f"advance(advance(v, 0, {j}), {j}, {k}) has entries {sorted(hops)}, "
                    f"advance(v, 0, {k}) has {sorted(direct)}; the state at a split must not depend on the path"
                )
            for name in direct:
                err = _max_diff(hops[name], direct[name])
                if not err <= atol:
                    raise ContractViolation(
                        "composition", gen, f"entry {name!r} of advance(advance(v, 0, {j}), {j}, {k}) differs "
                        f"from advance(v, 0, {k}) by {err:.3g} (atol {atol:g}); advance(state, j, k) must start "
                        "from the state at split j and run only the blocks between j and k"
                    )


def _check_batch(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    batch = max(batch, 2)  # one sample cannot show a mixing of samples
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        for k in _splits(gen):
            state = gen.advance(v, 0, k)
            for name, t in state.items():
                if t.dim() == 0 or t.shape[0] != batch:
                    raise ContractViolation(
                        "batch", gen, f"entry {name!r} at split {k} has shape {tuple(t.shape)}, not [B={batch}, ...]; "
                        "every state entry needs a leading batch dim (expand shared tensors per sample)"
                    )
            together = gen.render(state, k)
            for i in range(batch):
                one = {name: t[i : i + 1] for name, t in v.items()}
                err = _max_diff(gen.render(gen.advance(one, 0, k), k), together[i : i + 1])
                if not err <= atol:
                    raise ContractViolation(
                        "batch", gen, f"sample {i} rendered alone at split {k} differs from its image in a batch "
                        f"of {batch} by {err:.3g} (atol {atol:g}); no operation may mix the samples of a batch "
                        "(batch statistics such as BatchNorm in training mode, a mean or sum over dim 0)"
                    )


def _check_init(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    batch = max(batch, 2)
    device = _device_of(gen)
    # Two draws in a row: one that takes numbers from the global RNG (advanced by the first) differs.
    a, b, c = _draw(gen, batch, seed), _draw(gen, batch, seed), _draw(gen, batch, seed + 1)
    if not isinstance(a, Mapping) or not a:
        raise ContractViolation("init", gen, f"init_variables returned {type(a).__name__}, not a non-empty dict of tensors")
    if set(a) != set(b) or any(not torch.equal(a[n], b[n]) for n in a):
        raise ContractViolation(
            "init", gen, "init_variables with the same seeded torch.Generator gave different variables; draw "
            "every random number from the `generator` argument (torch.randn(..., generator=generator)), not "
            "from the global RNG"
        )
    for name, t in a.items():
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ContractViolation("init", gen, f"entry {name!r} of init_variables is not a floating-point tensor")
        if t.dim() == 0 or t.shape[0] != batch:
            raise ContractViolation(
                "init", gen, f"entry {name!r} of init_variables({batch}) has shape {tuple(t.shape)}; "
                f"every entry needs the batch size {batch} as its first dim"
            )
        if t.device != device:
            raise ContractViolation(
                "init", gen, f"entry {name!r} of init_variables is on {t.device}, the generator on {device}; "
                "draw on the CPU generator, then move the result to the weights' device"
            )
    if set(c) == set(a) and all(torch.equal(a[n], c[n]) for n in a):
        raise ContractViolation(
            "init", gen, f"init_variables gave the same variables for seeds {seed} and {seed + 1}; draw them "
            "from the `generator` argument"
        )
    if all(torch.equal(t[0], t[1]) for t in a.values()):
        raise ContractViolation(
            "init", gen, "init_variables gave every sample of the batch the same variables; draw each "
            "problem's variables independently (one draw of shape [B, ...])"
        )


def _check_frozen(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    if gen.freeze() is not gen:
        raise ContractViolation("frozen", gen, "freeze() must return the generator itself (return self)")
    if gen.train() is not gen:
        raise ContractViolation("frozen", gen, "train() must return the generator itself (return self)")
    training = [name or type(gen).__name__ for name, m in gen.named_modules() if m.training]
    if training:
        raise ContractViolation(
            "frozen", gen, f"modules {training[:5]} are in training mode after freeze() and train(); keep "
            "SplitGenerator.train (it stays in eval mode: Lightning calls train() on the whole module)"
        )
    trainable = [name for name, p in gen.named_parameters() if p.requires_grad]
    if trainable:
        raise ContractViolation(
            "frozen", gen, f"parameters {trainable[:5]} require grad after freeze(); freeze() must set "
            "requires_grad=False on every weight (ILO optimises the state, never the weights)"
        )


def _check_groups(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        for k in _splits(gen):
            names = set(gen.advance(v, 0, k))
            groups = dict(gen.groups(k))
            missing, extra = sorted(names - set(groups)), sorted(set(groups) - names)
            if missing or extra:
                raise ContractViolation(
                    "groups", gen, f"groups({k}) must name exactly the state's entries at split {k}: "
                    f"entries without a group {missing}, groups of absent entries {extra}"
                )
            unknown = {n: g for n, g in groups.items() if g not in GROUPS}
            if unknown:
                raise ContractViolation(
                    "groups", gen, f"groups({k}) uses unknown groups {unknown}; every entry belongs to one of "
                    f"{GROUPS} (stage configs name these in `free` and `radius`)"
                )


def _check_sphere(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        for k in _splits(gen):
            state = gen.advance(v, 0, k)
            for name, dims in dict(gen.sphere_variables(k)).items():
                if name not in state:
                    raise ContractViolation(
                        "sphere", gen, f"sphere_variables({k}) names {name!r}, which is not in the state at "
                        f"split {k} (entries {sorted(state)}); name only entries of that split's state"
                    )
                nd = state[name].dim()
                ok = (
                    isinstance(dims, Sequence) and len(dims) > 0
                    and all(isinstance(d, int) and -nd <= d < nd for d in dims)
                )
                norm = sorted(d % nd for d in dims) if ok else []
                if not ok or len(set(norm)) != len(norm) or 0 in norm:
                    raise ContractViolation(
                        "sphere", gen, f"sphere_variables({k})[{name!r}] = {dims!r} is not a tuple of distinct "
                        f"dims of the {nd}-D entry that leaves out the batch dim 0 (e.g. {tuple(range(1, nd))})"
                    )


def _check_split_range(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    v = _draw(gen, 1, seed)
    past = int(gen.num_splits) + 1
    calls: Dict[str, Callable[[], object]] = {
        f"render(v, {past})": lambda: gen.render(v, past),
        f"advance(v, 0, {past})": lambda: gen.advance(v, 0, past),
    }
    for call, fn in calls.items():
        try:
            with torch.no_grad():
                fn()
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001 - the wrong kind of error is the finding
            raise ContractViolation(
                "split_range", gen, f"{call} raised {type(err).__name__} ({err}), not ValueError; call "
                "self.check_split(split) first (it names the valid range)"
            ) from err
        raise ContractViolation(
            "split_range", gen, f"{call} did not raise, but the valid splits are 0..{past - 1}; call "
            "self.check_split(split) first (it raises a ValueError naming the valid range)"
        )


def _check_autocast(gen: SplitGenerator, batch: int, seed: int, atol: float, tolerance: float) -> None:
    device = _device_of(gen)
    # What Lightning's "bf16-mixed" uses on the CPU and "16-mixed" on a GPU.
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    v = _draw(gen, batch, seed)
    with torch.no_grad():
        for k in sorted({0, int(gen.num_splits)}):
            state = gen.advance(v, 0, k)
            ref = gen.render(state, k)
            try:
                with torch.autocast(device.type, dtype=dtype):
                    low = gen.render(state, k)
            except Exception as err:  # noqa: BLE001 - any failure under autocast is the finding
                raise ContractViolation(
                    "autocast", gen, f"render(state, {k}) under torch.autocast({device.type!r}, {dtype}) raised "
                    f"{type(err).__name__}: {err}; cast inputs of ops that autocast does not cover to a common dtype"
                ) from err
            if tuple(low.shape) != tuple(ref.shape) or not torch.isfinite(low).all():
                raise ContractViolation(
                    "autocast", gen, f"render(state, {k}) under torch.autocast({device.type!r}, {dtype}) is "
                    f"{'not finite' if low.shape == ref.shape else f'of shape {tuple(low.shape)}'}; compute the "
                    "parts that overflow in low precision in float32 (autocast(enabled=False) and .float())"
                )
            err = _max_diff(low.float(), ref.float())
            scale = float(ref.abs().max())
            if not err <= tolerance * scale:
                raise ContractViolation(
                    "autocast", gen, f"render(state, {k}) under torch.autocast({device.type!r}, {dtype}) differs "
                    f"from float32 by {err:.3g}, more than {tolerance:g} x max|image| = {tolerance * scale:.3g}; "
                    "compute the precision-sensitive parts in float32"
                )


_CHECKS: Dict[str, Callable[[SplitGenerator, int, int, float, float], None]] = {
    "split": _check_split,
    "composition": _check_composition,
    "batch": _check_batch,
    "init": _check_init,
    "frozen": _check_frozen,
    "groups": _check_groups,
    "sphere": _check_sphere,
    "split_range": _check_split_range,
    "autocast": _check_autocast,
}

#: The names of the contract's properties, in the order :func:`check_split_generator` checks them.
PROPERTIES: Tuple[str, ...] = tuple(_CHECKS)


# ----------------------------------------------------------------------------- entry points
def check_property(
    gen: SplitGenerator,
    name: str,
    *,
    batch: int = 2,
    seed: int = 0,
    atol: float = 1e-5,
    autocast_tolerance: float = 0.1,
) -> None:
    """Check one property of the split contract on the generator's device.

    Args:
        gen: the generator.
        name: one of :data:`PROPERTIES`.
        batch: problems per batch (``batch``, ``init`` use at least 2).
        seed: seed of the ``torch.Generator`` the variables are drawn with.
        atol: largest absolute difference of exact identities (split, batch).
        autocast_tolerance: largest difference under autocast, as a fraction of ``max|image|``.

    Raises:
        ContractViolation: (an ``AssertionError``) naming the property and the fix; also
            when a protocol method raises while the property is checked.
        ValueError: on an unknown property name.
    """
    if name not in _CHECKS:
        raise ValueError(f"unknown contract property {name!r}; choose from {PROPERTIES}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1; got {batch}")
    try:
        with _full_float32(_device_of(gen)):
            _CHECKS[name](gen, int(batch), int(seed), float(atol), float(autocast_tolerance))
    except ContractViolation:
        raise
    except Exception as err:  # noqa: BLE001 - a protocol method that fails is a broken property too
        raise ContractViolation(
            name, gen, f"a protocol method raised {type(err).__name__}: {err} (see the traceback above)"
        ) from err


def check_split_generator(
    gen: SplitGenerator,
    *,
    batch: int = 2,
    device: Optional[DeviceLike] = None,
    atol: float = 1e-5,
    autocast: bool = True,
    seed: int = 0,
    autocast_tolerance: float = 0.1,
) -> SplitGenerator:
    """Check every property of the split contract (:data:`PROPERTIES`) of a generator.

    Run it on your own generator before solving with it; ilo-pl's DCGAN and
    StyleGAN-2 pass it on the CPU and on CUDA.

    Args:
        gen: the generator.
        batch: problems per batch.
        device: where to check; the generator is moved there (``gen.to(device)``,
            in place). ``None``: where its weights are.
        atol: largest absolute difference of the exact identities (float32
            rounding; raise it for a deep generator on a GPU).
        autocast: also check rendering under ``torch.autocast`` (skip for a
            generator that is only ever run in float32).
        seed: seed of the drawn variables.
        autocast_tolerance: largest difference under autocast, as a fraction of ``max|image|``.

    Returns:
        The generator (on ``device``).

    Raises:
        ContractViolation: (an ``AssertionError``) naming the first broken property and the fix.
    """
    if not isinstance(gen, SplitGenerator):
        raise TypeError(
            f"check_split_generator checks a SplitGenerator; got {type(gen).__name__} "
            "(subclass ilo_pl.modules.generators.base.SplitGenerator)"
        )
    if device is not None:
        gen = gen.to(device)
    for name in PROPERTIES:
        if name == "autocast" and not autocast:
            continue
        check_property(gen, name, batch=batch, seed=seed, atol=atol, autocast_tolerance=autocast_tolerance)
    return gen


class SplitGeneratorContract:
    """Base class of a generator's contract tests: one pytest test per property.

    Subclass it in a class whose name starts with ``Test`` and implement
    :meth:`make_generator`; pytest then runs ``test_<property>`` for every
    entry of :data:`PROPERTIES`. The tests take a ``device`` fixture: ilo-pl's
    ``tests/conftest.py`` gives ``"cpu"``, plus ``"cuda"`` (marked ``gpu``)
    where a GPU is visible; elsewhere define one, e.g.
    ``@pytest.fixture(params=["cpu"]) def device(request): return request.param``.

    Class attributes set the tolerances (:func:`check_property`'s arguments).
    A subclass adds its generator's own tests beside the inherited ones::

        class TestMyGenerator(SplitGeneratorContract):
            atol = 1e-6

            def make_generator(self, device):
                return MyGenerator().to(device)
    """

    batch: int = 2
    seed: int = 0
    atol: float = 1e-5
    autocast_tolerance: float = 0.1

    # One generator per (test class, device), built on first use: building can be slow.
    _built: ClassVar[Dict[Tuple[type, str], SplitGenerator]] = {}

    def make_generator(self, device: torch.device) -> SplitGenerator:
        """Build the generator under test on ``device`` (override this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_generator(self, device)")

    def generator(self, device: DeviceLike) -> SplitGenerator:
        """The generator under test on ``device`` (built once per test class and device)."""
        key = (type(self), str(device))
        if key not in self._built:
            self._built[key] = self.make_generator(torch.device(device))
        return self._built[key]

    def check(self, name: str, device: DeviceLike) -> None:
        """Check property ``name`` of the generator on ``device`` with this class's tolerances."""
        check_property(
            self.generator(device), name, batch=self.batch, seed=self.seed, atol=self.atol,
            autocast_tolerance=self.autocast_tolerance,
        )

    def test_split(self, device: str) -> None:
        self.check("split", device)

    def test_composition(self, device: str) -> None:
        self.check("composition", device)

    def test_batch(self, device: str) -> None:
        self.check("batch", device)

    def test_init(self, device: str) -> None:
        self.check("init", device)

    def test_frozen(self, device: str) -> None:
        self.check("frozen", device)

    def test_groups(self, device: str) -> None:
        self.check("groups", device)

    def test_sphere(self, device: str) -> None:
        self.check("sphere", device)

    def test_split_range(self, device: str) -> None:
        self.check("split_range", device)

    def test_autocast(self, device: str) -> None:
        self.check("autocast", device)
