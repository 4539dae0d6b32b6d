"""The split-generator contract (``ilo_pl.testing.generators``) and the DCGAN generator.

* the DCGAN passes the contract on every ``device`` (``TestDCGANContract``),
  plus its own shapes, split errors and checkpoint errors;
* a toy generator shows the smallest generator that passes, run both ways
  (``check_split_generator`` and a ``SplitGeneratorContract`` subclass);
* a broken copy of it per property makes the checker fail with that
  property's name and the fix (so the checker can fail).

StyleGAN-2's contract tests are in ``tests/test_stylegan2.py``.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Type

import pytest
import torch
from torch import Tensor, nn

from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.testing.generators import (
    PROPERTIES,
    ContractViolation,
    SplitGeneratorContract,
    check_property,
    check_split_generator,
)


# ----------------------------------------------------------------------------- DCGAN
class TestDCGANContract(SplitGeneratorContract):
    """The embedded DCGAN keeps the split contract (one test per property and device)."""

    batch = 3
    atol = 1e-6

    def make_generator(self, device: torch.device) -> DCGANGenerator:
        return DCGANGenerator().to(device)

    def test_split_shapes(self, device: str) -> None:
        gen = self.generator(device)
        v = gen.init_variables(2)
        shapes = [tuple(gen.advance(v, 0, k)["h"].shape) for k in range(5)]
        assert shapes == [(2, 100, 1, 1), (2, 512, 4, 4), (2, 256, 8, 8), (2, 128, 16, 16), (2, 64, 32, 32)]
        assert tuple(gen(v).shape) == (2, 3, 64, 64)

    def test_split_errors_name_the_valid_range(self, device: str) -> None:
        gen = self.generator(device)
        with pytest.raises(ValueError, match="valid split points are 0..4"):
            gen.render(gen.init_variables(1), 5)
        with pytest.raises(ValueError, match="back to split"):
            gen.advance(gen.advance(gen.init_variables(1), 0, 2), 2, 1)


def test_dcgan_checkpoint_errors(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DCGANGenerator(weights=tmp_path / "missing.pt")
    bad = tmp_path / "other.pt"
    torch.save({"netG_state_dict": {"conv.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(ValueError, match=r"missing keys \['main.0.weight'.*unexpected keys \['conv.weight'\]"):
        DCGANGenerator(weights=bad)
    sd = DCGANGenerator(weights="random").state_dict()
    sd["main.0.weight"] = torch.zeros(100, 256, 4, 4)
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"mis-shaped keys main.0.weight \(100, 256, 4, 4\)"):
        DCGANGenerator(weights=bad)


# ----------------------------------------------------------------------------- a toy generator
class Toy(SplitGenerator):
    """Three tanh layers 8 -> 8 -> 8 -> 16 (a 1x4x4 image), split after the first two.

    The state is ``{"h": [B, width]}``: the input ``z`` at split 0 (group
    ``latent``, on the sphere), the activation after that (group ``state``).
    """

    num_splits = 2
    image_shape = (1, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # fixed weights, and the global RNG left as it was
            torch.manual_seed(0)
            self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 16)])
        self.freeze()

    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        z = torch.randn(batch_size, 8, generator=generator)
        return {"h": z.to(self.blocks[0].weight.device)}

    def _run(self, h: Tensor, start: int, stop: int) -> Tensor:
        for block in self.blocks[start:stop]:
            h = torch.tanh(block(h))
        return h

    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        self.check_split(start)
        self.check_split(stop)
        return {"h": self._run(state["h"], start, stop)}

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        self.check_split(split)
        return self._run(state["h"], split, 3).view(-1, *self.image_shape)

    def groups(self, split: int) -> Dict[str, str]:
        return {"h": "latent" if split == 0 else "state"}

    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        return {"h": (1,)} if split == 0 else {}


class TestToyContract(SplitGeneratorContract):
    """How a user runs the contract on their own generator."""

    def make_generator(self, device: torch.device) -> Toy:
        return Toy().to(device)


def test_check_split_generator_passes_a_good_generator_and_moves_it() -> None:
    gen = Toy()
    assert check_split_generator(gen, device="cpu", batch=3) is gen
    for name in PROPERTIES:
        check_property(gen, name)


def test_check_split_generator_argument_errors() -> None:
    with pytest.raises(TypeError, match="checks a SplitGenerator; got Linear"):
        check_split_generator(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown contract property 'speed'"):
        check_property(Toy(), "speed")


# ----------------------------------------------------------------------------- broken generators
class IgnoresTheSplit(Toy):
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        self.check_split(stop)
        return {"h": self._run(state["h"], start, self.num_splits)}  # always to the last split


class IgnoresTheStart(Toy):
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        self.check_split(stop)
        return {"h": self._run(state["h"], 0, stop)}  # as if every state were at split 0


class MixesTheBatch(Toy):
    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        image = super().render(state, split)
        return image - image.mean(0, keepdim=True)  # batch statistics: a sample depends on its batch mates


class UsesTheGlobalRNG(Toy):
    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        return {"h": torch.randn(batch_size, 8)}  # ignores `generator`


class SameForEverySample(Toy):
    def init_variables(self, batch_size: int, generator: Optional[torch.Generator] = None) -> State:
        return {"h": torch.randn(1, 8, generator=generator).expand(batch_size, -1).clone()}


class LeavesEvalMode(Toy):
    def train(self, mode: bool = True) -> "LeavesEvalMode":
        return nn.Module.train(self, mode)  # drops SplitGenerator's "always eval"


class KeepsTrainableWeights(Toy):
    def freeze(self) -> "KeepsTrainableWeights":
        self.eval()
        return self


class UnknownGroup(Toy):
    def groups(self, split: int) -> Dict[str, str]:
        return {"h": "weights"}


class MissingGroup(Toy):
    def groups(self, split: int) -> Dict[str, str]:
        return {} if split > 0 else super().groups(split)


class SphereOverTheBatch(Toy):
    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        return {"h": (0, 1)}


class SphereOfAnAbsentEntry(Toy):
    def sphere_variables(self, split: int) -> Dict[str, Tuple[int, ...]]:
        return {"z": (1,)}


class NoRangeCheck(Toy):
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        return {"h": self._run(state["h"], start, stop)}

    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        return self._run(state["h"], min(split, 2), 3).view(-1, *self.image_shape)


class FlatImage(Toy):
    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        return super().render(state, split).flatten(1)  # [B, 16], not [B, 1, 4, 4]


class FailsAtTheLastSplit(Toy):
    def advance(self, state: Mapping[str, Tensor], start: int, stop: int) -> State:
        if stop == self.num_splits:
            raise RuntimeError("out of memory (pretend)")
        return super().advance(state, start, stop)


class BreaksUnderAutocast(Toy):
    def render(self, state: Mapping[str, Tensor], split: int) -> Tensor:
        image = super().render(state, split)
        return image / 0 if torch.is_autocast_enabled(image.device.type) else image


BROKEN = [
    (IgnoresTheSplit, "split", r"render\(advance\(v, 0, 0\), 0\) differs from render\(v, 0\) by .* G2\(G1\(v\)\)"),
    (FlatImage, "split", r"render\(v, 0\) gave \(2, 16\), not an image \[B, \*image_shape\] = \(2, 1, 4, 4\)"),
    (FailsAtTheLastSplit, "split", r"a protocol method raised RuntimeError: out of memory \(pretend\)"),
    (IgnoresTheStart, "composition", r"'h' of advance\(advance\(v, 0, 1\), 1, 2\) differs from advance\(v, 0, 2\)"),
    (MixesTheBatch, "batch", r"sample 0 rendered alone at split 0 differs .* no operation may mix the samples"),
    (UsesTheGlobalRNG, "init", r"same seeded torch.Generator gave different variables"),
    (SameForEverySample, "init", r"every sample of the batch the same variables"),
    (LeavesEvalMode, "frozen", r"in training mode after freeze\(\) and train\(\)"),
    (KeepsTrainableWeights, "frozen", r"parameters \['blocks.0.weight'.* require grad after freeze\(\)"),
    (UnknownGroup, "groups", r"unknown groups \{'h': 'weights'\}"),
    (MissingGroup, "groups", r"groups\(1\) must name exactly .* entries without a group \['h'\]"),
    (SphereOverTheBatch, "sphere", r"\(0, 1\) is not a tuple of distinct dims .* leaves out the batch dim 0"),
    (SphereOfAnAbsentEntry, "sphere", r"names 'z', which is not in the state at split 0"),
    (NoRangeCheck, "split_range", r"render\(v, 3\) did not raise, but the valid splits are 0..2"),
    (BreaksUnderAutocast, "autocast", r"under torch.autocast\('cpu', torch.bfloat16\) is not finite"),
]


@pytest.mark.parametrize("cls, prop, message", BROKEN, ids=[c.__name__ for c, _, _ in BROKEN])
def test_the_checker_names_the_broken_property(cls: Type[Toy], prop: str, message: str) -> None:
    gen = cls()
    with pytest.raises(ContractViolation, match=message) as info:
        check_split_generator(gen)
    assert info.value.property == prop
    assert isinstance(info.value, AssertionError)  # what pytest reports as a failed check
    assert str(info.value).startswith(f"{cls.__name__} breaks the split contract ('{prop}'): ")
    # The properties that do not depend on the defect still hold.
    also_broken = {
        IgnoresTheSplit: {"composition"},
        FailsAtTheLastSplit: {"composition", "batch", "groups", "sphere", "autocast"},
    }.get(cls, set())
    for other in PROPERTIES:
        if other != prop and other not in also_broken:
            check_property(gen, other)


def test_the_contract_class_fails_on_a_broken_generator() -> None:
    class Broken(SplitGeneratorContract):
        def make_generator(self, device: torch.device) -> Toy:
            return MixesTheBatch().to(device)

    Broken().test_split("cpu")  # the other properties pass
    with pytest.raises(ContractViolation, match="no operation may mix the samples"):
        Broken().test_batch("cpu")
    with pytest.raises(NotImplementedError, match=r"must implement make_generator\(self, device\)"):
        SplitGeneratorContract().test_split("cpu")
