// Python bindings of the StyleGAN-2 ops (CUDA kernels in *_kernel.cu).
// Built just in time by ilo_pl/ops/_cuda.py; the pure-PyTorch paths in
// ilo_pl/ops/*.py define the semantics these kernels must reproduce.
#include <torch/extension.h>

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x,
                             int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                             int64_t pad_x1, int64_t pad_y0, int64_t pad_y1);

torch::Tensor fused_bias_act_cuda(const torch::Tensor& x, const torch::Tensor& bias,
                                  const torch::Tensor& ref, int64_t mode, double negative_slope,
                                  double scale);

namespace {

void check_cuda_float(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 (the Python wrapper promotes half precision)");
}

torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x,
                        int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                        int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  check_cuda_float(x, "upfirdn2d: input");
  check_cuda_float(kernel, "upfirdn2d: kernel");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: input must be [B, C, H, W]");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be [kh, kw]");
  TORCH_CHECK(x.scalar_type() == kernel.scalar_type(), "upfirdn2d: input and kernel dtypes differ");
  TORCH_CHECK(x.device() == kernel.device(), "upfirdn2d: input and kernel are on different devices");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1,
              "upfirdn2d: up/down factors must be >= 1");
  return upfirdn2d_cuda(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
}

torch::Tensor fused_bias_act(const torch::Tensor& x, const torch::Tensor& bias,
                             const torch::Tensor& ref, int64_t mode, double negative_slope,
                             double scale) {
  check_cuda_float(x, "fused_bias_act: input");
  TORCH_CHECK(x.dim() >= 2, "fused_bias_act: input must be [B, C, ...]");
  TORCH_CHECK(mode == 0 || mode == 1, "fused_bias_act: mode must be 0 (forward) or 1 (gradient)");
  if (bias.numel() > 0) {
    check_cuda_float(bias, "fused_bias_act: bias");
    TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "fused_bias_act: bias dtype differs");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(1), "fused_bias_act: bias must be [C]");
  }
  if (mode == 1) {
    check_cuda_float(ref, "fused_bias_act: reference output");
    TORCH_CHECK(ref.sizes() == x.sizes(), "fused_bias_act: reference and gradient shapes differ");
    TORCH_CHECK(ref.scalar_type() == x.scalar_type(), "fused_bias_act: reference dtype differs");
  }
  return fused_bias_act_cuda(x, bias, ref, mode, negative_slope, scale);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "upfirdn2d (CUDA)");
  m.def("fused_bias_act", &fused_bias_act, "fused bias + scaled leaky ReLU and its gradient (CUDA)");
}
