// Exact in-place l1-ball projection on the CPU, one call for a whole batch.
//
// For each row b of param ([B, n], contiguous) with deviation d = param - anchor:
// if ||d||_1 > radius[b], param[b] becomes anchor + d - clip(d, -theta, theta),
// where theta is the exact soft threshold of |d| for the ball (Michelot 1986,
// started from a warm lower bound). Rows inside are not written at all.
//
// Why a kernel: the eager PyTorch path makes ~5 full passes over the row per
// Newton step (~4 steps even warm-started) and pays op dispatch per pass. Here:
//   phase 1 (all rows): one pass computes ||d||_1, f at the previous step's
//     threshold g (the sum and count of |d_i| > g), and packs the candidates
//     {|d_i| > t0}, t0 = (1 - kMargin) * g, into a scratch row;
//   phase 2 (rows outside): Newton's method on the packed candidates only
//     (typically a few percent of the row), from the Newton step off g, which
//     is a lower bound of theta on either side of the root (f is convex), then
//     Michelot's iteration until the active set stops shrinking. While every
//     iterate stays >= t0 the candidates hold every entry that can be active;
//     an iterate below t0 re-packs the row from it (a proven lower bound), so
//     the result is exact from any guess. Then one write pass.
// No row is written before every row's norm was checked finite (phase 1), so a
// bad row raises in Python with param untouched.
//
// Sums over candidates are accumulated in double; the norm and f at the guess
// blockwise (the input precision within kBlock entries, double across). Status
// per row: 0 inside (untouched), 1 projected, 2 radius 0 (set to the anchor),
// 3 non-finite norm (nothing written anywhere).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 2048;   // entries summed in the input precision before adding to a double
constexpr double kMargin = 0.25;   // candidates: entries above (1 - kMargin) * the previous threshold
constexpr int kMaxRepacks = 3;     // then pack every nonzero entry (always enough)
constexpr int kMaxIters = 1000;    // Newton steps; only bounds adversarial rounding

// One pass over a row: ||d||_1, the sum and count of |d| above `g`, and the
// entries of |d| above `t0` packed into `cand` (if not null; it holds n entries).
struct Scan {
  double norm1 = 0.0;
  double sum_g = 0.0;
  int64_t count_g = 0;
  int64_t packed = 0;
};

template <typename T>
void scan_generic(const T* p, const T* a, int64_t n, T g, T t0, T* cand, Scan* out) {
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t len = std::min(kBlock, n - s);
    const T* ps = p + s;
    const T* as = a + s;
    T acc = 0, acc_g = 0;
    int64_t cnt_g = 0;
#pragma omp simd reduction(+ : acc, acc_g, cnt_g)
    for (int64_t i = 0; i < len; ++i) {
      const T u = std::abs(ps[i] - as[i]);
      acc += u;
      acc_g += u > g ? u : T(0);
      cnt_g += u > g ? 1 : 0;
    }
    out->norm1 += static_cast<double>(acc);
    out->sum_g += static_cast<double>(acc_g);
    out->count_g += cnt_g;
    if (cand != nullptr) {
      int64_t k = out->packed;
      for (int64_t i = 0; i < len; ++i) {  // branch-free packing: write always, advance if kept
        const T u = std::abs(ps[i] - as[i]);
        cand[k] = u;
        k += (u > t0) ? 1 : 0;
      }
      out->packed = k;
    }
  }
}

#if defined(__AVX512F__)
// The same with AVX-512: compress into a register, then a full-width store
// (a compressing store to memory is microcoded on some CPUs). The store may
// write past the packed count, never past the row: packed <= entries seen.
void scan_avx512(const float* p, const float* a, int64_t n, float g, float t0, float* cand, Scan* out) {
  const __m512 vg = _mm512_set1_ps(g);
  const __m512 vt = _mm512_set1_ps(t0);
  const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
  int64_t k = 0, s = 0;
  for (; s + kBlock <= n; s += kBlock) {
    __m512 acc = _mm512_setzero_ps(), acc_g = _mm512_setzero_ps();
    for (int64_t i = s; i < s + kBlock; i += 16) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(p + i), _mm512_loadu_ps(a + i));
      const __m512 u = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(d), absmask));
      acc = _mm512_add_ps(acc, u);
      const __mmask16 mg = _mm512_cmp_ps_mask(u, vg, _CMP_GT_OQ);
      acc_g = _mm512_mask_add_ps(acc_g, mg, acc_g, u);
      out->count_g += __builtin_popcount(static_cast<unsigned>(mg));
      if (cand != nullptr) {
        const __mmask16 mt = _mm512_cmp_ps_mask(u, vt, _CMP_GT_OQ);
        _mm512_storeu_ps(cand + k, _mm512_maskz_compress_ps(mt, u));
        k += __builtin_popcount(static_cast<unsigned>(mt));
      }
    }
    out->norm1 += static_cast<double>(_mm512_reduce_add_ps(acc));
    out->sum_g += static_cast<double>(_mm512_reduce_add_ps(acc_g));
  }
  out->packed = k;
  scan_generic<float>(p + s, a + s, n - s, g, t0, cand, out);
}

void scan_avx512(const double* p, const double* a, int64_t n, double g, double t0, double* cand, Scan* out) {
  const __m512d vg = _mm512_set1_pd(g);
  const __m512d vt = _mm512_set1_pd(t0);
  const __m512i absmask = _mm512_set1_epi64(0x7fffffffffffffffLL);
  __m512d acc = _mm512_setzero_pd(), acc_g = _mm512_setzero_pd();
  int64_t k = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d d = _mm512_sub_pd(_mm512_loadu_pd(p + i), _mm512_loadu_pd(a + i));
    const __m512d u = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(d), absmask));
    acc = _mm512_add_pd(acc, u);
    const __mmask8 mg = _mm512_cmp_pd_mask(u, vg, _CMP_GT_OQ);
    acc_g = _mm512_mask_add_pd(acc_g, mg, acc_g, u);
    out->count_g += __builtin_popcount(static_cast<unsigned>(mg));
    if (cand != nullptr) {
      const __mmask8 mt = _mm512_cmp_pd_mask(u, vt, _CMP_GT_OQ);
      _mm512_storeu_pd(cand + k, _mm512_maskz_compress_pd(mt, u));
      k += __builtin_popcount(static_cast<unsigned>(mt));
    }
  }
  out->norm1 += _mm512_reduce_add_pd(acc);
  out->sum_g += _mm512_reduce_add_pd(acc_g);
  out->packed = k;
  scan_generic<double>(p + i, a + i, n - i, g, t0, cand, out);
}
#endif

template <typename T>
Scan scan(const T* p, const T* a, int64_t n, T g, T t0, T* cand) {
  Scan out;
#if defined(__AVX512F__)
  scan_avx512(p, a, n, g, t0, cand, &out);
#else
  scan_generic<T>(p, a, n, g, t0, cand, &out);
#endif
  return out;
}

// The largest T <= x, so that for any T value u: u > x  <=>  u > round_down(x).
template <typename T>
T round_down(double x) {
  T y = static_cast<T>(x);
  if (static_cast<double>(y) > x) y = std::nextafter(y, -std::numeric_limits<T>::infinity());
  return y;
}

// Sum (in double) and count of the candidates c[0..m) above thr.
template <typename T>
void sum_above(const T* c, int64_t m, T thr, double* sum, int64_t* count) {
  double s = 0.0;
  int64_t k = 0;
  int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    const __m512 vt = _mm512_set1_ps(thr);
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (; i + 16 <= m; i += 16) {
      const __m512 v = _mm512_loadu_ps(c + i);
      const __mmask16 mk = _mm512_cmp_ps_mask(v, vt, _CMP_GT_OQ);
      lo = _mm512_mask_add_pd(lo, static_cast<__mmask8>(mk), lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
      hi = _mm512_mask_add_pd(hi, static_cast<__mmask8>(mk >> 8), hi,
                              _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
      k += __builtin_popcount(static_cast<unsigned>(mk));
    }
    s = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
#endif
#pragma omp simd reduction(+ : s, k)
  for (int64_t j = i; j < m; ++j) {
    const bool keep = c[j] > thr;
    s += keep ? static_cast<double>(c[j]) : 0.0;
    k += keep ? 1 : 0;
  }
  *sum = s;
  *count = k;
}

// Exact threshold of one row whose candidates (entries above t0, `m` of them)
// are packed in `cand`, by Newton's method on f(t) = sum_i max(u_i - t, 0) - r
// from `t` (Michelot's iteration once left of the root). While every iterate
// stays >= t0 the candidates hold every entry that matters; an iterate below
// t0 re-packs the row from it (an iterate is a lower bound after any step).
template <typename T>
double solve_row(const T* p, const T* a, int64_t n, double r, double lower, double t, double t0, T* cand, int64_t m) {
  int64_t c_prev = -1;
  int repacks = 0;
  for (int iter = 0; iter < kMaxIters; ++iter) {
    if (t < t0) {  // candidates may miss active entries: re-pack from t
      t = std::max(t, lower);
      t0 = ++repacks > kMaxRepacks ? 0.0 : t;
      m = scan<T>(p, a, n, T(0), round_down<T>(t0), cand).packed;
      c_prev = -1;
    }
    double s = 0.0;
    int64_t c = 0;
    sum_above<T>(cand, m, round_down<T>(t), &s, &c);
    if (c == 0) {  // t >= max|d|: right of the root, where f has no slope; restart at the lower bound
      if (lower >= t) return lower;  // (rounding only: lower <= theta < max|d|)
      t = lower;  // re-packed above if below t0
      c_prev = -1;
      continue;
    }
    const double rho = (s - r) / static_cast<double>(c);
    if (c == c_prev) return std::max(rho, 0.0);  // same active set as the last step: rho is the root
    c_prev = c;
    t = rho;
  }
  return std::max(t, 0.0);
}

template <typename T>
void project_impl(T* param, const T* anchor, const double* radius, double* theta, T* cand, int8_t* status,
                  int64_t rows, int64_t n) {
  std::vector<Scan> scans(rows);
  std::vector<double> t0s(rows, 0.0), gs(rows, 0.0);
  // Phase 1: for every row, the norm; for rows that may be outside, f at the
  // guess and the packed candidates.
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const double g = theta[b];
      const bool warm = std::isfinite(g) && g > 0.0;
      gs[b] = warm ? g : 0.0;
      t0s[b] = warm ? (1.0 - kMargin) * g : 0.0;
      const bool may_be_outside = std::isfinite(radius[b]) && radius[b] > 0.0;
      scans[b] = scan<T>(param + b * n, anchor + b * n, n, round_down<T>(gs[b]), round_down<T>(t0s[b]),
                         may_be_outside ? cand + b * n : nullptr);
    }
  });
  bool any_bad = false;
  for (int64_t b = 0; b < rows; ++b) {
    const double n1 = scans[b].norm1;
    const bool bad = !std::isfinite(n1) && std::isfinite(radius[b]);
    status[b] = bad ? 3 : (n1 > radius[b] ? (radius[b] == 0.0 ? 2 : 1) : 0);
    any_bad = any_bad || bad;
  }
  if (any_bad) return;  // nothing written; the caller raises
  // Phase 2: thresholds and writes of the rows outside.
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (status[b] == 0) continue;
      T* p = param + b * n;
      const T* a = anchor + b * n;
      double th = std::numeric_limits<double>::infinity();  // radius 0: every entry to the anchor
      if (status[b] == 1) {
        const Scan& sc = scans[b];
        const double r = radius[b];
        const double lower = std::max(0.0, (sc.norm1 - r) / static_cast<double>(n));  // Michelot's start
        // One Newton step from the guess lands left of the root (f is convex), usually very close.
        double t = sc.count_g > 0 ? (sc.sum_g - r) / static_cast<double>(sc.count_g) : lower;
        th = solve_row<T>(p, a, n, r, lower, std::max(t, lower), t0s[b], cand + b * n, sc.packed);
        theta[b] = th;
      }
      const T t = static_cast<T>(th);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T d = p[i] - a[i];
        const T c = std::max(std::min(d, t), -t);
        p[i] = a[i] + (d - c);  // |d| <= theta lands exactly on the anchor
      }
    }
  });
}

at::Tensor l1_project_(at::Tensor param, const at::Tensor& anchor, const at::Tensor& radius, at::Tensor theta,
                       at::Tensor cand) {
  TORCH_CHECK(param.device().is_cpu(), "l1_project_: CPU tensors only");
  TORCH_CHECK(param.dim() == 2 && param.is_contiguous(), "l1_project_: param must be a contiguous [B, n] tensor");
  TORCH_CHECK(param.scalar_type() == at::kFloat || param.scalar_type() == at::kDouble,
              "l1_project_: float32 or float64 only");
  TORCH_CHECK(anchor.sizes() == param.sizes() && anchor.scalar_type() == param.scalar_type() &&
                  anchor.is_contiguous() && anchor.device().is_cpu(),
              "l1_project_: anchor must match param (shape, dtype, contiguous CPU)");
  TORCH_CHECK(cand.sizes() == param.sizes() && cand.scalar_type() == param.scalar_type() && cand.is_contiguous() &&
                  cand.device().is_cpu(),
              "l1_project_: scratch must match param");
  const int64_t rows = param.size(0);
  TORCH_CHECK(radius.scalar_type() == at::kDouble && radius.is_contiguous() && radius.numel() == rows &&
                  radius.device().is_cpu(),
              "l1_project_: radius must be a contiguous float64 [B] CPU tensor");
  TORCH_CHECK(theta.scalar_type() == at::kDouble && theta.is_contiguous() && theta.numel() == rows &&
                  theta.device().is_cpu(),
              "l1_project_: theta must be a contiguous float64 [B] CPU tensor");
  at::Tensor status = at::empty({rows}, param.options().dtype(at::kChar));
  const int64_t n = param.size(1);
  if (rows == 0 || n == 0) return status.zero_();
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "l1_project_", [&] {
    project_impl<scalar_t>(param.data_ptr<scalar_t>(), anchor.data_ptr<scalar_t>(), radius.data_ptr<double>(),
                           theta.data_ptr<double>(), cand.data_ptr<scalar_t>(), status.data_ptr<int8_t>(), rows, n);
  });
  return status;
}

}  // namespace

TORCH_LIBRARY(ilo_pl_cpu, m) {
  m.def("l1_project_(Tensor(a!) param, Tensor anchor, Tensor radius, Tensor(b!) theta, Tensor(c!) cand) -> Tensor");
  m.impl("l1_project_", c10::DispatchKey::CPU, TORCH_FN(l1_project_));
}
