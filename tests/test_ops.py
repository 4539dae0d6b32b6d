"""Tests of the StyleGAN-2 custom ops (``ilo_pl.ops``).

Every test that computes runs each implementation (``impl="ref"``, the
pure-PyTorch specification; ``"cuda"``, skipped without a GPU; ``"auto"``):
conformance with the reference port's outputs and gradients (shared
fixtures), an explicit-loop reference of the CUDA kernel's index arithmetic,
float64 gradcheck, the adjoint that the CUDA backward uses, autocast
behaviour, errors (an explicit ``impl`` that cannot run raises), and the
lazy/fallback JIT loader.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
from ilo_pl.ops import OP_IMPLS, FusedLeakyReLU, fused_leaky_relu, upfirdn2d, upfirdn2d_native
from ilo_pl.ops import _cuda
from ilo_pl.ops.upfirdn2d import grad_geometry

#: Implementations that compute (``"auto"`` is one of ``"ref"`` / ``"cuda"``).
IMPLS = ["ref", "cuda", "auto"]
HAS_CUDA = torch.cuda.is_available()


def _device(impl: str) -> str:
    """Where ``impl`` runs: CUDA for ``"cuda"`` (skipping without a GPU), else the CPU."""
    if impl == "cuda":
        if not HAS_CUDA:
            pytest.skip("impl='cuda' needs a CUDA GPU")
        return "cuda"
    return "cpu"


def test_impls_are_the_documented_ones() -> None:
    assert OP_IMPLS == ("auto", "ref", "cuda")


@pytest.fixture(scope="module")
def ops_ref() -> dict:
    if not TINY.is_file():
        pytest.fail(
            f"missing conformance fixture {TINY}: the shared fixtures must be at ../shared/fixtures "
            "relative to the repository root"
        )
    return torch.load(TINY, map_location="cpu", weights_only=True)["reference"]["ops"]


# ----------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["upfirdn2d_up2", "upfirdn2d_down2", "upfirdn2d_blur"])
def test_upfirdn2d_matches_reference_port(ops_ref: dict, name: str, impl: str) -> None:
    dev = _device(impl)
    case = ops_ref[name]
    args = case["args"]
    x = case["input"].to(dev).requires_grad_(True)
    out = upfirdn2d(x, case["kernel"].to(dev), up=args["up"], down=args["down"], pad=tuple(args["pad"]), impl=impl)
    assert out.shape == case["output"].shape
    torch.testing.assert_close(out.cpu(), case["output"], atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(out, x, case["grad_output"].to(dev))
    torch.testing.assert_close(grad.cpu(), case["grad_input"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_leaky_relu_matches_reference_port(ops_ref: dict, impl: str) -> None:
    dev = _device(impl)
    case = ops_ref["fused_leaky_relu"]
    x = case["input"].to(dev).requires_grad_(True)
    b = case["bias"].to(dev).requires_grad_(True)
    out = fused_leaky_relu(x, b, impl=impl)
    torch.testing.assert_close(out.cpu(), case["output"], atol=1e-5, rtol=0)
    gx, gb = torch.autograd.grad(out, (x, b), case["grad_output"].to(dev))
    torch.testing.assert_close(gx.cpu(), case["grad_input"], atol=1e-5, rtol=0)
    torch.testing.assert_close(gb.cpu(), case["grad_bias"], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- semantics
def _loop_upfirdn2d(x: torch.Tensor, k: torch.Tensor, up, down, pad) -> torch.Tensor:  # noqa: ANN001
    """Explicit loops with exactly the CUDA kernel's index arithmetic (upfirdn2d_kernel.cu)."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    b, c, h, w = x.shape
    kh, kw = k.shape
    oh = (h * uy + py0 + py1 - kh) // dy + 1
    ow = (w * ux + px0 + px1 - kw) // dx + 1
    out = torch.zeros(b, c, oh, ow, dtype=x.dtype)
    for oy, ox in itertools.product(range(oh), range(ow)):
        acc = torch.zeros(b, c, dtype=x.dtype)
        for i in range(kh):
            u = oy * dy + i - py0
            if u < 0 or u >= h * uy or u % uy:
                continue
            for j in range(kw):
                v = ox * dx + j - px0
                if v < 0 or v >= w * ux or v % ux:
                    continue
                acc += x[:, :, u // uy, v // ux] * k[kh - 1 - i, kw - 1 - j]
        out[:, :, oy, ox] = acc
    return out


GEOMETRIES = [
    ((1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),
    ((1, 1), (2, 2), (1, 1, 1, 1)),
    ((2, 1), (1, 2), (1, 2, 0, 3)),
    ((3, 2), (2, 3), (-1, 2, 2, -1)),
    ((1, 1), (1, 1), (-1, 0, 1, -1)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("up,down,pad", GEOMETRIES)
def test_upfirdn2d_equals_explicit_loops(up, down, pad, impl) -> None:  # noqa: ANN001
    dev = _device(impl)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g)
    k = torch.randn(3, 4, dtype=torch.float64, generator=g)  # non-square, asymmetric
    out = upfirdn2d(x.to(dev), k.to(dev), up=up, down=down, pad=pad, impl=impl)
    torch.testing.assert_close(out.cpu(), _loop_upfirdn2d(x, k, up, down, pad), atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", ["ref", "cuda"])
@pytest.mark.parametrize("up,down,pad", GEOMETRIES)
def test_upfirdn2d_gradcheck_float64(up, down, pad, impl) -> None:  # noqa: ANN001
    dev = _device(impl)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g).to(dev).requires_grad_(True)
    k = torch.randn(3, 4, dtype=torch.float64, generator=g).to(dev)
    # The CUDA kernel gives no kernel gradient (a kernel requiring grad is refused): check x only there.
    inputs = (x, k.requires_grad_(True)) if impl == "ref" else (x, k)
    # fast_mode checks random directional derivatives: same power, a fraction of the time.
    fn = lambda a, b: upfirdn2d(a, b, up=up, down=down, pad=pad, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("up,down,pad", GEOMETRIES)
def test_upfirdn2d_backward_geometry_is_the_adjoint(up, down, pad) -> None:  # noqa: ANN001
    """The CUDA backward computes grad_x = upfirdn2d(g, flip(k), *grad_geometry): check it."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g)
    k = torch.randn(4, 3, dtype=torch.float64, generator=g)
    y = upfirdn2d_native(x, k, up, down, pad)
    r = torch.randn(y.shape, dtype=torch.float64, generator=g)
    g_up, g_down, g_pad = grad_geometry(tuple(x.shape[2:]), tuple(k.shape), up, down, pad)
    adj = upfirdn2d_native(r, torch.flip(k, [0, 1]), g_up, g_down, g_pad)
    assert adj.shape == x.shape
    # <A x, r> == <x, A^T r>, and A^T r equals autograd's vector-Jacobian product.
    assert torch.allclose((y * r).sum(), (x * adj).sum(), atol=1e-10, rtol=1e-10)
    xg = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(upfirdn2d_native(xg, k, up, down, pad), xg, r)
    torch.testing.assert_close(adj, vjp, atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_upfirdn2d_batch_equals_per_sample(impl: str) -> None:
    dev = _device(impl)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 8, 8, generator=g).to(dev)
    k = torch.randn(4, 4, generator=g).to(dev)
    batched = upfirdn2d(x, k, up=2, pad=(2, 1), impl=impl)
    single = torch.cat([upfirdn2d(x[i : i + 1], k, up=2, pad=(2, 1), impl=impl) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_upfirdn2d_identity_kernel_and_output_size(impl: str) -> None:
    dev = _device(impl)
    x = torch.randn(1, 2, 5, 7, device=dev)
    delta = torch.ones(1, 1, device=dev)
    torch.testing.assert_close(upfirdn2d(x, delta, impl=impl), x)
    up = upfirdn2d(x, delta, up=2, impl=impl)
    assert up.shape == (1, 2, 10, 14)
    torch.testing.assert_close(up[..., ::2, ::2], x)
    assert up[..., 1::2, :].abs().sum() == 0
    assert upfirdn2d(x, torch.ones(4, 4, device=dev), down=2, pad=(1, 2), impl=impl).shape == (1, 2, 3, 4)


def test_auto_is_ref_on_the_cpu_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(7)
    x, k, b = torch.randn(2, 3, 9, 7, generator=g), torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
    assert torch.equal(upfirdn2d(x, k, up=2, pad=(2, 1)), upfirdn2d(x, k, up=2, pad=(2, 1), impl="ref"))
    assert torch.equal(fused_leaky_relu(x, b), fused_leaky_relu(x, b, impl="ref"))


@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_fused_leaky_relu_gradcheck_float64(impl: str) -> None:
    dev = _device(impl)
    g = torch.Generator().manual_seed(4)
    # Keep inputs away from the kink at 0 where finite differences are meaningless.
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    x = (x + 0.1 * x.sign()).to(dev).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, generator=g).mul(0.01).to(dev).requires_grad_(True)
    fn = lambda a, c: fused_leaky_relu(a, c, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_leaky_relu_values_and_shapes(impl: str) -> None:
    dev = _device(impl)
    x = torch.tensor([[-2.0, 3.0], [1.0, -1.0]], device=dev)  # [B=2, C=2] (the mapping network's case)
    b = torch.tensor([1.0, -1.0], device=dev)
    want = math.sqrt(2) * torch.tensor([[-0.2, 2.0], [2.0, -0.4]], device=dev)
    torch.testing.assert_close(fused_leaky_relu(x, b, impl=impl), want)
    torch.testing.assert_close(
        fused_leaky_relu(x, impl=impl), math.sqrt(2) * torch.nn.functional.leaky_relu(x, 0.2)
    )
    m = FusedLeakyReLU(2, impl=impl).to(dev)
    assert list(m.state_dict()) == ["bias"]
    y5 = torch.randn(2, 2, 3, 4, 5, device=dev)
    torch.testing.assert_close(m(y5), fused_leaky_relu(y5, torch.zeros(2, device=dev), impl="ref"))


# ----------------------------------------------------------------------------- autocast / dtypes
def test_ops_compute_float32_under_cpu_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, generator=g)
    k = torch.randn(4, 4, generator=g)
    b = torch.randn(3, generator=g)
    ref_up = upfirdn2d(x, k, up=2, pad=(2, 1))
    ref_act = fused_leaky_relu(x, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        up = upfirdn2d(x, k, up=2, pad=(2, 1))
        act = fused_leaky_relu(x, b)
        # bf16 inputs (what autocast hands on from a conv) are promoted, not kept in bf16.
        up16 = upfirdn2d(x.bfloat16(), k, up=2, pad=(2, 1))
    assert up.dtype == act.dtype == up16.dtype == torch.float32
    torch.testing.assert_close(up, ref_up, atol=1e-6, rtol=0)
    torch.testing.assert_close(act, ref_act, atol=1e-6, rtol=0)
    torch.testing.assert_close(up16, upfirdn2d(x.bfloat16().float(), k, up=2, pad=(2, 1)), atol=1e-6, rtol=0)


def test_float64_stays_float64() -> None:
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    assert upfirdn2d(x, torch.ones(2, 2), pad=(1, 0)).dtype == torch.float64
    assert fused_leaky_relu(x).dtype == torch.float64


# ----------------------------------------------------------------------------- errors
def test_upfirdn2d_errors() -> None:
    k = torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"expects a \[B, C, H, W\] tensor"):
        upfirdn2d(torch.randn(3, 8, 8), k)
    with pytest.raises(ValueError, match="2-D kernel"):
        upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(4))
    with pytest.raises(ValueError, match="up factors must be >= 1"):
        upfirdn2d(torch.randn(1, 3, 8, 8), k, up=0)
    with pytest.raises(ValueError, match=r"pad must be \(pad0, pad1\) or \(x0, x1, y0, y1\)"):
        upfirdn2d(torch.randn(1, 3, 8, 8), k, pad=(1, 2, 3))
    with pytest.raises(ValueError, match="empty output"):
        upfirdn2d(torch.randn(1, 3, 2, 2), k)
    with pytest.raises(TypeError, match="floating-point"):
        upfirdn2d(torch.ones(1, 1, 8, 8, dtype=torch.int64), k)


def test_fused_leaky_relu_errors() -> None:
    with pytest.raises(ValueError, match=r"bias must be \[C\] = \[3\]"):
        fused_leaky_relu(torch.randn(2, 3, 4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"expects \[B, C, ...\]"):
        fused_leaky_relu(torch.randn(5), torch.zeros(5))


def test_unknown_impl_is_rejected_with_the_choices() -> None:
    choices = r"impl must be one of 'auto', 'ref', 'cuda'; got 'native'"
    with pytest.raises(ValueError, match="upfirdn2d: " + choices):
        upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2), impl="native")
    with pytest.raises(ValueError, match="fused_leaky_relu: " + choices):
        fused_leaky_relu(torch.randn(2, 3), impl="native")
    with pytest.raises(ValueError, match="FusedLeakyReLU: " + choices):
        FusedLeakyReLU(3, impl="native")


def test_explicit_cuda_on_a_cpu_tensor_raises_instead_of_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cuda, "load_extension", lambda: pytest.fail("a CPU tensor must not build the kernels"))
    with pytest.raises(ValueError, match=r"upfirdn2d: impl='cuda' runs on CUDA tensors; got a cpu tensor"):
        upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2), impl="cuda")
    with pytest.raises(ValueError, match=r"fused_leaky_relu: impl='cuda' runs on CUDA tensors; got a cpu"):
        fused_leaky_relu(torch.randn(2, 3), torch.zeros(3), impl="cuda")
    with pytest.raises(ValueError, match="impl='cuda' runs on CUDA tensors"):
        FusedLeakyReLU(3, impl="cuda")(torch.randn(2, 3))


# ----------------------------------------------------------------------------- JIT loader
def test_cpu_use_never_builds_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise AssertionError("the CUDA extension must not be built for CPU tensors")

    monkeypatch.setattr(_cuda, "load_extension", boom)
    upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(4, 4), pad=(2, 1))
    fused_leaky_relu(torch.randn(1, 2, 3), torch.zeros(2))


def test_failed_build_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import torch.utils.cpp_extension as cpp

    calls = []

    def failing_load(**kwargs: object) -> None:
        calls.append(kwargs)
        raise RuntimeError("Error building extension 'ilo_pl_stylegan2_ops'")

    monkeypatch.setattr(cpp, "load", failing_load)
    monkeypatch.setattr(cpp, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: a finished build would just load
    monkeypatch.delenv("ILO_PL_OPS", raising=False)
    _cuda.BUILD.reset()
    try:
        fake_gpu_tensor = SimpleNamespace(is_cuda=True)
        with caplog.at_level(logging.WARNING, logger="ilo_pl.ops._cuda"):
            assert _cuda.extension_for(fake_gpu_tensor) is None
            assert _cuda.extension_for(fake_gpu_tensor) is None
        assert len(calls) == 1, "a failed build must not be retried"
        warnings = [r for r in caplog.records if r.name == "ilo_pl.ops._cuda" and r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "pure-PyTorch" in warnings[0].getMessage()
        assert "Error building extension" in warnings[0].getMessage()
    finally:
        _cuda.BUILD.reset()


def test_native_env_var_makes_auto_skip_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILO_PL_OPS", "native")
    monkeypatch.setattr(_cuda, "load_extension", lambda: pytest.fail("must not build with ILO_PL_OPS=native"))
    assert _cuda.extension_for(SimpleNamespace(is_cuda=True)) is None


def test_explicit_cuda_builds_despite_the_env_var_and_names_a_failed_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ILO_PL_OPS only steers impl='auto': an explicit 'cuda' still builds, and a failed build raises."""
    import torch.utils.cpp_extension as cpp

    def failing_load(**kwargs: object) -> None:
        raise RuntimeError("nvcc fatal: Unsupported gpu architecture")

    monkeypatch.setattr(cpp, "load", failing_load)
    monkeypatch.setattr(cpp, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: a finished build would just load
    monkeypatch.setenv("ILO_PL_OPS", "native")
    _cuda.BUILD.reset()
    try:
        with pytest.raises(RuntimeError, match=r"impl='cuda' but the CUDA kernels could not be built "
                                               r"\(RuntimeError: nvcc fatal: Unsupported gpu architecture\)"):
            _cuda.require_extension("upfirdn2d", SimpleNamespace(is_cuda=True))
    finally:
        _cuda.BUILD.reset()


@pytest.mark.gpu
def test_explicit_cuda_refuses_a_kernel_that_requires_grad() -> None:
    x = torch.randn(1, 1, 8, 8, device="cuda")
    k = torch.ones(2, 2, device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="no gradient w.r.t. the FIR kernel"):
        upfirdn2d(x, k, impl="cuda")
    upfirdn2d(x, k, impl="auto").sum().backward()  # auto takes the reference path for it
    assert k.grad is not None


@pytest.mark.gpu
def test_cuda_kernels_match_ref() -> None:
    g = torch.Generator().manual_seed(6)
    for up, down, pad in GEOMETRIES:
        x = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64)
        k = torch.randn(4, 3, generator=g, dtype=torch.float64)
        xc = x.cuda().requires_grad_(True)
        out = upfirdn2d(xc, k.cuda(), up=up, down=down, pad=pad, impl="cuda")
        torch.testing.assert_close(out.cpu(), upfirdn2d(x, k, up, down, pad, impl="ref"), atol=1e-10, rtol=0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        fused_leaky_relu(x.cuda(), b.cuda(), impl="cuda").cpu(), fused_leaky_relu(x, b, impl="ref")
    )
