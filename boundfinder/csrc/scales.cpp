// Formats whose scale is a reduction over the tensor, on float32 CPU tensors:
// - integer affine per channel: each row's min and max, its scale and zero point, and the row quantized while it
//   is in cache (quantize.affine_qparams and kernels.fake_quant_affine, operation for operation);
// - dynamic fixed point: the histogram of binary exponents (kernels.exponent_bins and exponent_histogram) in one
//   read, without the tensor of bins.
// Bit for bit the torch kernels' results: tests/test_native_scales.py.
#include "native.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <mutex>

namespace bf {
namespace {

constexpr uint32_t kExpMask = 0x7F800000u;

// A float32 word as an int32 that orders like the value (every NaN aside): negative values' magnitude bits
// flipped, so that integer min and max (which vectorise) serve as float ones.
BF_INLINE int32_t order_key(uint32_t w) {
  return static_cast<int32_t>(w ^ ((static_cast<uint32_t>(static_cast<int32_t>(w) >> 31)) & kAbs));
}

BF_INLINE float from_key(int32_t k) {
  const uint32_t u = static_cast<uint32_t>(k);
  return from_bits(u ^ ((static_cast<uint32_t>(k >> 31)) & kAbs));
}

struct Affine {
  float scale, zero_point;
};

// quantize.affine_qparams for one finite range, in float32 as torch computes it.
Affine affine_qparams(float min_val, float max_val, int64_t qmin, int64_t qmax, bool symmetric,
                      int64_t symmetric_zero_point) {
  const float lo = std::min(min_val, 0.0f);
  float hi = std::max(max_val, 0.0f);
  const double span = static_cast<double>(qmax - qmin);
  if (symmetric) {
    hi = std::max(-lo, hi);
    return {std::max(hi / static_cast<float>(span / 2), FLT_EPSILON), static_cast<float>(symmetric_zero_point)};
  }
  const float scale = std::max((hi - lo) / static_cast<float>(span), FLT_EPSILON);
  // lo / scale lies in [-span, 0]: its rounding converts to int32 exactly
  const int64_t zp = qmin - static_cast<int64_t>(static_cast<int32_t>(std::nearbyint(lo / scale)));
  return {scale, static_cast<float>(std::min(std::max(zp, qmin), qmax))};
}

// kernels.fake_quant_affine for one row of finite elements' parameters (NaN elements stay themselves).
template <int M>
BF_INLINE void fake_quant_row(const float* __restrict x, float* __restrict out, int64_t n, uint32_t first,
                              const Affine a, float qmin, float qmax, uint32_t key) {
  const float scale = a.scale, zp = a.zero_point;
  const float inv = 1.0f / scale;
  const float lo_j = qmin - zp, hi_j = qmax - zp;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float y = std::min(std::max(v * inv, lo_j), hi_j);
    float o;
    if (M == kNearest) {
      o = ((to_integer<M>(y, 0) + zp) - zp) * scale;
    } else {
      // the largest code at or below v (v * inv may be one code off), then the step up where the mode says so
      float j = std::floor(y);
      j = j * scale > v ? j - 1.0f : ((j + 1.0f) * scale <= v ? j + 1.0f : j);
      j = std::min(std::max(j, lo_j), hi_j);
      const float at = j * scale;
      const bool exact = at == v;
      bool up;
      if (M == kStochastic) {
        const float frac = std::min(std::max(y - j, 0.0f), 1.0f);
        const uint32_t rb = random_bits(first + static_cast<uint32_t>(i), key);
        up = ((static_cast<int32_t>(frac * static_cast<float>(1 << kRandBits)) + static_cast<int32_t>(rb)) >=
              (1 << kRandBits)) & !exact;
      } else if (M == kUp) {
        up = !exact;
      } else if (M == kDown) {
        up = false;
      } else {
        up = (v < 0.0f) & !exact;
      }
      up = up & (v > at);  // (bitwise: no branches in the loop)
      const float r = std::min(j + (up ? 1.0f : 0.0f), hi_j) * scale;
      o = r == 0.0f ? 0.0f : r;
    }
    out[i] = v != v ? v : o;
  }
}

template <int M>
BF_INLINE void affine_rows(const float* in, float* out, int64_t r0, int64_t r1, int64_t n, int64_t qmin,
                           int64_t qmax, bool symmetric, int64_t symmetric_zero_point, uint32_t key, bool* finite) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = in + r * n;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(x);
    int32_t kmin = INT32_MAX, kmax = INT32_MIN;
    uint32_t special = 0;  // an infinity or NaN in the row
    for (int64_t i = 0; i < n; ++i) {
      const int32_t k = order_key(w[i]);
      kmin = std::min(kmin, k);
      kmax = std::max(kmax, k);
      special |= static_cast<uint32_t>((w[i] & kExpMask) == kExpMask);
    }
    if (special) {  // (the torch kernels' results for such rows follow their NaN and infinity arithmetic)
      *finite = false;
      return;
    }
    const Affine a = affine_qparams(from_key(kmin), from_key(kmax), qmin, qmax, symmetric, symmetric_zero_point);
    fake_quant_row<M>(x, out + r * n, n, static_cast<uint32_t>(r * n), a, static_cast<float>(qmin),
                      static_cast<float>(qmax), key);
  }
}

BF_CLONES void round_rows(const float* in, float* out, int64_t r0, int64_t r1, int64_t n, int64_t qmin, int64_t qmax,
                          bool symmetric, int64_t symmetric_zero_point, uint32_t key, int64_t mode, bool* finite) {
  switch (mode) {
    case kNearest: return affine_rows<kNearest>(in, out, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point, key,
                                                finite);
    case kTruncate: return affine_rows<kTruncate>(in, out, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point,
                                                  key, finite);
    case kUp: return affine_rows<kUp>(in, out, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point, key, finite);
    case kDown: return affine_rows<kDown>(in, out, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point, key,
                                          finite);
    default: return affine_rows<kStochastic>(in, out, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point, key,
                                             finite);
  }
}

constexpr int kBins = 277;  // kernels.N_BINS: floor(log2|x|) + 149 for every finite nonzero float32
constexpr int kChunk = 1024;

// kernels.exponent_bins of `n` <= kChunk words into `bins` (kBins for zeros, infinities and NaN).
BF_CLONES void exponent_bins(const uint32_t* __restrict w, int32_t* __restrict bins, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = w[i] & kAbs;
    const int32_t expf = static_cast<int32_t>(a >> 23);
    const int32_t b = expf == 0 ? subnormal_log2(a) : expf + 22;  // a subnormal's value is a * 2**-149
    bins[i] = (a == 0 || expf == 255) ? kBins : b;
  }
}

}  // namespace

// `rows` (channels, n), contiguous float32 on the CPU, each row quantized to integers in [qmin, qmax] with its
// own scale and zero point from its min and max (quantize.affine_qparams: symmetric formats use
// `symmetric_zero_point`). Returns the result and whether every element was finite: where a row holds an infinity
// or NaN the result is incomplete, and the caller runs the torch kernels instead. Element i of the flattened
// tensor draws random bits at index i (`key`: kernels.seed_key).
std::tuple<torch::Tensor, bool> round_affine_rows(const torch::Tensor& rows, int64_t qmin, int64_t qmax,
                                                  bool symmetric, int64_t symmetric_zero_point, int64_t mode,
                                                  int64_t key) {
  TORCH_CHECK(rows.scalar_type() == torch::kFloat32 && rows.device().is_cpu() && rows.dim() == 2 &&
                  rows.is_contiguous(),
              "boundfinder round_affine_rows: expected a contiguous 2-D float32 CPU tensor, got ", rows.scalar_type(),
              " of shape ", rows.sizes(), " with strides ", rows.strides(), " on ", rows.device());
  TORCH_CHECK(qmin < qmax && qmax - qmin < (int64_t(1) << 24), "boundfinder round_affine_rows: `qmin < qmax` with ",
              "fewer than 2**24 codes must hold, got qmin=", qmin, ", qmax=", qmax);
  TORCH_CHECK(mode >= kNearest && mode <= kStochastic, "boundfinder round_affine_rows: mode must be in 0..4, got ",
              mode);
  TORCH_CHECK(rows.numel() < (int64_t(1) << 31) || mode != kStochastic,
              "boundfinder round_affine_rows: stochastic rounding takes at most 2**31 - 1 elements");
  torch::NoGradGuard no_grad;
  torch::Tensor out = torch::empty_like(rows);
  const int64_t channels = rows.size(0), n = rows.size(1);
  if (rows.numel() == 0) return {out, true};
  const float* in = rows.data_ptr<float>();
  float* o = out.data_ptr<float>();
  bool finite = true;
  std::mutex m;
  at::parallel_for(0, channels, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(n, 1)),
                   [&](int64_t r0, int64_t r1) {
                     bool ok = true;
                     round_rows(in, o, r0, r1, n, qmin, qmax, symmetric, symmetric_zero_point,
                                static_cast<uint32_t>(key), mode, &ok);
                     if (!ok) {
                       std::lock_guard<std::mutex> lock(m);
                       finite = false;
                     }
                   });
  return {out, finite};
}

// kernels.exponent_histogram(kernels.exponent_bins(x)): counts of floor(log2|x|) + 149 over the finite nonzero
// elements of a contiguous float32 CPU tensor, an int64 tensor of kernels.N_BINS entries.
torch::Tensor exponent_histogram(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu() && x.is_contiguous(),
              "boundfinder exponent_histogram: expected a contiguous float32 CPU tensor, got ", x.scalar_type(),
              " with strides ", x.strides(), " on ", x.device());
  torch::Tensor hist = torch::zeros({kBins}, torch::kInt64);
  int64_t* total = hist.data_ptr<int64_t>();
  const uint32_t* w = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  std::mutex m;
  at::parallel_for(0, x.numel(), int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    // eight interleaved counts, so that runs of one exponent do not wait on each other's increments (32-bit:
    // each counts an eighth of one thread's part, far under 2**32 elements)
    uint32_t counts[8][kBins + 1] = {};
    int32_t bins[kChunk];
    for (int64_t i = begin; i < end; i += kChunk) {
      const int64_t len = std::min<int64_t>(kChunk, end - i);
      exponent_bins(w + i, bins, len);
      int64_t j = 0;
      for (; j + 8 <= len; j += 8) {
        for (int u = 0; u < 8; ++u) ++counts[u][bins[j + u]];
      }
      for (; j < len; ++j) ++counts[0][bins[j]];
    }
    std::lock_guard<std::mutex> lock(m);
    for (int b = 0; b < kBins; ++b) {
      for (int u = 0; u < 8; ++u) total[b] += counts[u][b];
    }
  });
  return hist;
}

// kernels.dynamic_frac_bits from exponent_histogram(x): the largest fraction length F such that at most `allowed`
// finite elements have |x| >= 2**(word_bits - 1 - F); among those, the one whose range reaches down to the
// smallest nonzero element; 126 when there is none.
int64_t dynamic_frac_bits(const torch::Tensor& x, int64_t allowed, int64_t word_bits) {
  const torch::Tensor hist = exponent_histogram(x);
  const int64_t* h = hist.data_ptr<int64_t>();
  int lowest = 0;
  while (lowest < kBins && h[lowest] == 0) ++lowest;
  if (lowest == kBins) return 126;
  int64_t above = 0;  // elements in bins >= i, for i from the top down: the lowest i with at most `allowed`
  int first_ok = kBins;
  for (int i = kBins - 1; i >= 0 && above + h[i] <= allowed; --i) {
    above += h[i];
    first_ok = i;
  }
  const int64_t t = std::max(lowest, first_ok) - 149;  // |x| >= 2**t overflows
  return std::min<int64_t>(std::max<int64_t>(word_bits - 1 - t, -126), 126);
}

}  // namespace bf
