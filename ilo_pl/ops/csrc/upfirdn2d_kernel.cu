// upfirdn2d on the GPU: one thread per output sample.
//
// Per axis, output o reads the zero-upsampled, padded input at positions
// o * down + i (i = 0..k-1), weighted by the flipped kernel (a true
// convolution). Position p of the padded signal is upsampled sample
// u = p - pad0, which is input sample u / up when 0 <= u < n * up and
// u % up == 0 (otherwise an inserted zero or padding). Negative pads need no
// special case: they only shift u and shrink the output.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

namespace {

template <typename scalar_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const scalar_t* __restrict__ kernel, int64_t planes, int in_h,
                                 int in_w, int out_h, int out_w, int k_h, int k_w, int up_x,
                                 int up_y, int down_x, int down_y, int pad_x0, int pad_y0) {
  const int64_t total = planes * out_h * out_w;
  const int64_t up_h = static_cast<int64_t>(in_h) * up_y;
  const int64_t up_w = static_cast<int64_t>(in_w) * up_x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int ox = static_cast<int>(idx % out_w);
    const int oy = static_cast<int>((idx / out_w) % out_h);
    const int64_t plane = idx / (static_cast<int64_t>(out_w) * out_h);
    const scalar_t* src = x + plane * in_h * in_w;
    scalar_t acc = 0;
    for (int i = 0; i < k_h; ++i) {
      const int64_t u = static_cast<int64_t>(oy) * down_y + i - pad_y0;
      if (u < 0 || u >= up_h || u % up_y != 0) continue;
      const int64_t iy = u / up_y;
      const scalar_t* krow = kernel + static_cast<int64_t>(k_h - 1 - i) * k_w;
      for (int j = 0; j < k_w; ++j) {
        const int64_t v = static_cast<int64_t>(ox) * down_x + j - pad_x0;
        if (v < 0 || v >= up_w || v % up_x != 0) continue;
        acc += src[iy * in_w + v / up_x] * krow[k_w - 1 - j];
      }
    }
    out[idx] = acc;
  }
}

}  // namespace

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x_in, const torch::Tensor& kernel_in,
                             int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                             int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
  const c10::cuda::OptionalCUDAGuard device_guard(device_of(x_in));
  const torch::Tensor x = x_in.contiguous();
  const torch::Tensor kernel = kernel_in.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t in_h = x.size(2), in_w = x.size(3);
  const int64_t k_h = kernel.size(0), k_w = kernel.size(1);
  const int64_t out_h = (in_h * up_y + pad_y0 + pad_y1 - k_h) / down_y + 1;
  const int64_t out_w = (in_w * up_x + pad_x0 + pad_x1 - k_w) / down_x + 1;
  TORCH_CHECK(in_h * up_y + pad_y0 + pad_y1 - k_h >= 0 && in_w * up_x + pad_x0 + pad_x1 - k_w >= 0,
              "upfirdn2d: the padded input is smaller than the kernel");
  auto out = torch::empty({batch, channels, out_h, out_w}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int threads = 256;
  const int64_t wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "upfirdn2d_cuda", [&] {
    upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(),
        batch * channels, static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h),
        static_cast<int>(out_w), static_cast<int>(k_h), static_cast<int>(k_w),
        static_cast<int>(up_x), static_cast<int>(up_y), static_cast<int>(down_x),
        static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
