// MX block rounding of float32 CPU tensors in one pass: each block's shared exponent from its largest magnitude,
// then its elements rounded to the element format and scaled back while the block is in cache (the compiled
// kernels make the same computation from a whole-tensor graph at a third of memory speed).
// The arithmetic is boundfinder/kernels.py's, operation for operation: round_block_words and round_float_words
// (saturating) for float elements, round_block and round_fixed_bits for fixed-point elements; the random bits
// are kernels.rand_like's stream (lowbias32 of the padded flat index xor the key). Bit for bit the same results:
// tests/test_native_blocks.py.
#include "native.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace bf {
namespace {

constexpr uint32_t kInfWord = 0x7F800000u;
constexpr uint32_t kNanWord = 0x7FC00000u;
constexpr int64_t kBlock32 = 32;

// kernels.float_fields, as unsigned words (code_off may be negative: it is only ever subtracted, modulo 2**32).
struct FloatElement {
  uint32_t d, emin32, man_sub, max_word, q_word, halfq_word, ovf_nearest, code_off;
};

// kernels.fixed_fields.
struct FixedElement {
  float scale, inv, qmin, qmax;
};

// kernels.round_float_words for one float32 word, overflow saturating (the MX element rule), general variant.
template <int M>
BF_INLINE uint32_t round_element(uint32_t w, const FloatElement p, uint32_t rbits) {
  const uint32_t a = w & kAbs;
  const uint32_t sign = w ^ a;
  const int32_t expf = static_cast<int32_t>(a >> 23);
  const int32_t t = std::max(static_cast<int32_t>(p.emin32) - std::max(expf, 1), 0);
  const uint32_t dc = std::min(p.d + static_cast<uint32_t>(t), 23u);
  const uint32_t mask = (1u << dc) - 1;
  const bool away = M == kUp ? sign == 0 : sign != 0;
  uint32_t r;
  if (M == kNearest) {
    r = a + ((mask + (((a - p.code_off) >> dc) & 1u)) >> 1);
  } else if (M == kTruncate) {
    r = a;
  } else if (M == kUp || M == kDown) {
    r = a + (away ? mask : 0u);
  } else {
    r = std::min(a, kInfWord + 1) + (rbits >> (kRandBits - dc));
  }
  r &= ~mask;
  const bool tiny = a < p.q_word;  // under one quantum: 0 or q
  if (M == kNearest) {
    r = tiny ? (a > p.halfq_word ? p.q_word : 0u) : r;
  } else if (M == kTruncate) {
    r &= 0u - static_cast<uint32_t>(!tiny);  // (as a mask: GCC leaves this select as a branch)
  } else if (M == kUp || M == kDown) {
    r = tiny ? ((away & (a > 0)) ? p.q_word : 0u) : r;
  } else {
    const uint32_t sig = a - (static_cast<uint32_t>(static_cast<int32_t>(p.emin32) - 1 - t) << 23);
    const int32_t u = static_cast<int32_t>((kRandBits - 23) + p.man_sub) - t;
    const uint32_t frac = (sig << std::max(u, 0)) >> std::min(std::max(-u, 0), 31);
    r = tiny ? (p.q_word & (0u - ((frac + rbits) >> kRandBits))) : r;
  }
  return (a > kInfWord ? a : std::min(r, p.max_word)) | sign;
}

// kernels.round_block_words for one block of `n` words (N, when that is not 0) whose first has flat index `first`.
template <int M, int64_t N>
BF_INLINE void float_block(const uint32_t* __restrict w, uint32_t* __restrict out, int64_t size, uint32_t first,
                           const FloatElement p, int32_t emax, uint32_t key) {
  const int64_t n = N ? N : size;
  uint32_t amax = 0;
  for (int64_t j = 0; j < n; ++j) amax = std::max(amax, w[j] & kAbs);
  if (amax >= kInfWord) {  // an inf or NaN in the block: all NaN
    for (int64_t j = 0; j < n; ++j) out[j] = kNanWord;
    return;
  }
  // the biased exponent of the block's maximum (<= 0 for a float32 subnormal: its floor(log2) + 127)
  const int32_t e_amax = amax >= 0x00800000u ? static_cast<int32_t>(amax >> 23) : subnormal_log2(amax) - 22;
  const int32_t k = -std::min(std::max(e_amax - (127 + emax), -127), 127);  // scaled = x * 2**k
  if (static_cast<int32_t>(p.emin32 - p.man_sub) - k >= 2) {
    // Rounding x * 2**k to the element and scaling back is rounding x to the element's format with its
    // exponents shifted by -k, as long as that format's quantum and half quantum are float32 normals: every
    // scaling is then exact, and a value the reference scales below float32's normals (2**-126 stands in) is
    // under 2**-30 quanta either way, which every mode, stochastic too, rounds alike: with k < 0 because
    // BlockFormat keeps such elements' quanta at 2**-95 or more; with k >= 0 the reference's value is exact.
    // Its fields are the element's, shifted (ovf_nearest is unused when saturating).
    const uint32_t shift = static_cast<uint32_t>(k) << 23;
    FloatElement q = p;
    q.emin32 -= static_cast<uint32_t>(k);
    q.max_word -= shift;
    q.q_word -= shift;
    q.halfq_word -= shift;
    q.code_off -= shift;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t rb = M == kStochastic ? random_bits(first + static_cast<uint32_t>(j), key) : 0u;
      out[j] = round_element<M>(w[j], q, rb);
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t a = w[j] & kAbs;
    const uint32_t sign = w[j] ^ a;
    const int32_t expf = static_cast<int32_t>(a >> 23);
    const int32_t e_a = subnormal_log2(a);
    const bool sub = expf == 0;
    const int32_t ext_exp = sub ? e_a - 22 : expf;
    const uint32_t frac = sub ? (a << std::min(std::max(23 - e_a, 0), 31)) & 0x7FFFFFu : a & 0x7FFFFFu;
    const int32_t se = ext_exp + k;
    const uint32_t below = k >= 0 ? a << std::min(k, 31) : 0x00800000u;  // (k >= 0: a subnormal's own word)
    const uint32_t scaled = a == 0 ? 0u : (se >= 1 ? (static_cast<uint32_t>(se) << 23) | frac : below);
    const uint32_t rb = M == kStochastic ? random_bits(first + static_cast<uint32_t>(j), key) : 0u;
    const uint32_t r = round_element<M>(scaled | sign, p, rb) & kAbs;
    // scale back by 2**-k; below float32's smallest normal, shift the significand right with ties to even (r is
    // itself a float32 subnormal only for elements with 8 exponent bits, whose blocks have k >= 0)
    const int32_t er = static_cast<int32_t>(r >> 23);
    const int32_t ne = std::max(er, 1) - k;
    const uint32_t m24 = er == 0 ? r : (r & 0x7FFFFFu) | 0x800000u;
    const uint32_t s = static_cast<uint32_t>(std::min(std::max(1 - ne, 1), 31));
    const uint32_t denormal = (m24 + ((1u << (s - 1)) - 1) + ((m24 >> s) & 1u)) >> s;
    const uint32_t o = r == 0 ? 0u : (ne >= 1 ? r - (static_cast<uint32_t>(k) << 23) : denormal);
    out[j] = o | sign;
  }
}

// 2**e for e in [-149, 127], exactly.
BF_INLINE float pow2(int32_t e) {
  return e >= -126 ? from_bits(static_cast<uint32_t>(e + 127) << 23) : from_bits(1u << (e + 149));
}

// kernels.round_block (fixed-point elements) for one block: frexp, exp2 and the products as there.
template <int M, int64_t N>
BF_INLINE void fixed_block(const float* __restrict x, float* __restrict out, int64_t size,
                                                       uint32_t first, const FixedElement p, int32_t emax,
                                                       uint32_t key) {
  const int64_t n = N ? N : size;
  const uint32_t* w = reinterpret_cast<const uint32_t*>(x);
  uint32_t amax = 0;  // the largest magnitude's word (NaN words are above infinity's)
  for (int64_t j = 0; j < n; ++j) amax = std::max(amax, w[j] & kAbs);
  if (amax >= kInfWord) {
    for (int64_t j = 0; j < n; ++j) out[j] = from_bits(kNanWord);
    return;
  }
  // frexp's exponent minus one: floor(log2(amax)), and -1 for a block of zeros (frexp(0) gives 0)
  const int32_t floor_log2 = amax == 0 ? -1 : amax < 0x00800000u ? subnormal_log2(amax) - 149
                                                                 : static_cast<int32_t>(amax >> 23) - 127;
  const int32_t shared = std::min(std::max(floor_log2 - emax, -127), 127);
  const float scale = pow2(shared);
  const float unscale = pow2(-shared);
  const float tiny = from_bits(0x00800000u);  // 2**-126
  for (int64_t j = 0; j < n; ++j) {
    float v = x[j] * unscale;
    if (M == kUp || M == kDown) v = (v == 0.0f && x[j] != 0.0f) ? std::copysign(tiny, x[j]) : v;
    // round_fixed_bits
    float y = v * p.scale;
    if (M == kUp || M == kDown) y = y == 0.0f ? v : y;
    const float q = to_integer<M>(std::min(std::max(y, p.qmin), p.qmax),
                                  M == kStochastic ? random_bits(first + static_cast<uint32_t>(j), key) : 0u);
    out[j] = (q == 0.0f ? 0.0f : q * p.inv) * scale;
  }
}

// Rows of `cols` elements, `bs` to a block (`per_row` blocks, the last one shorter where bs does not divide cols).
// Block g of the padded layout (kernels' reference pads each row to whole blocks) draws its random bits from
// index g * bs on.
struct Rows {
  int64_t cols, bs, per_row;
};

// block(at, n, first) for the blocks g in [begin, end): their first element's offset, length and padded index.
template <typename F>
BF_INLINE void for_blocks(const Rows& L, int64_t begin, int64_t end, F&& block) {
  int64_t row = begin / L.per_row, b = begin - row * L.per_row;
  for (int64_t g = begin; g < end; ++g) {
    const int64_t col = b * L.bs;
    block(row * L.cols + col, std::min(L.bs, L.cols - col), static_cast<uint32_t>(g * L.bs));
    if (++b == L.per_row) {
      b = 0;
      ++row;
    }
  }
}

template <int M>
BF_INLINE void float_blocks(const float* in, float* out, int64_t begin, int64_t end, const Rows& L,
                            const FloatElement& p, int32_t emax, uint32_t key) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(in);
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  for_blocks(L, begin, end, [&](int64_t at, int64_t n, uint32_t first) __attribute__((always_inline)) {
    if (n == kBlock32) {  // every MX format's size: a fixed trip count, no loop remainders
      float_block<M, kBlock32>(w + at, o + at, n, first, p, emax, key);
    } else {
      float_block<M, 0>(w + at, o + at, n, first, p, emax, key);
    }
  });
}

template <int M>
BF_INLINE void fixed_blocks(const float* in, float* out, int64_t begin, int64_t end, const Rows& L,
                            const FixedElement& p, int32_t emax, uint32_t key) {
  for_blocks(L, begin, end, [&](int64_t at, int64_t n, uint32_t first) __attribute__((always_inline)) {
    if (n == kBlock32) {
      fixed_block<M, kBlock32>(in + at, out + at, n, first, p, emax, key);
    } else {
      fixed_block<M, 0>(in + at, out + at, n, first, p, emax, key);
    }
  });
}

BF_CLONES void round_float_blocks(const float* in, float* out, int64_t begin, int64_t end, const Rows& L,
                                  const FloatElement& p, int32_t emax, uint32_t key, int64_t mode) {
  switch (mode) {
    case kNearest: return float_blocks<kNearest>(in, out, begin, end, L, p, emax, key);
    case kTruncate: return float_blocks<kTruncate>(in, out, begin, end, L, p, emax, key);
    case kUp: return float_blocks<kUp>(in, out, begin, end, L, p, emax, key);
    case kDown: return float_blocks<kDown>(in, out, begin, end, L, p, emax, key);
    default: return float_blocks<kStochastic>(in, out, begin, end, L, p, emax, key);
  }
}

BF_CLONES void round_fixed_blocks(const float* in, float* out, int64_t begin, int64_t end, const Rows& L,
                                  const FixedElement& p, int32_t emax, uint32_t key, int64_t mode) {
  switch (mode) {
    case kNearest: return fixed_blocks<kNearest>(in, out, begin, end, L, p, emax, key);
    case kTruncate: return fixed_blocks<kTruncate>(in, out, begin, end, L, p, emax, key);
    case kUp: return fixed_blocks<kUp>(in, out, begin, end, L, p, emax, key);
    case kDown: return fixed_blocks<kDown>(in, out, begin, end, L, p, emax, key);
    default: return fixed_blocks<kStochastic>(in, out, begin, end, L, p, emax, key);
  }
}

}  // namespace

// `rows` (n_rows, cols), contiguous float32 on the CPU, rounded in blocks of `block_size` consecutive elements of
// a row (the last block of a row shorter where block_size does not divide cols: the reference pads the row with
// zeros, which change no block's maximum) into a new tensor of the same shape.
// `fields`: kernels.float_fields of a float element, or kernels.fixed_fields of a fixed-point one (`fixed`);
// `mode`: kernels.MODE; `emax`: the element's emax (BlockFormat.element_emax); `key`: kernels.seed_key (any
// value for the deterministic modes). Random bits are drawn by the index of the padded rows, as the reference.
torch::Tensor round_blocks(const torch::Tensor& rows, int64_t block_size, const std::vector<double>& fields,
                           bool fixed, int64_t mode, int64_t emax, int64_t key) {
  TORCH_CHECK(rows.scalar_type() == torch::kFloat32 && rows.device().is_cpu() && rows.dim() == 2 &&
                  rows.is_contiguous(),
              "boundfinder round_blocks: expected a contiguous 2-D float32 CPU tensor, got ", rows.scalar_type(),
              " of shape ", rows.sizes(), " with strides ", rows.strides(), " on ", rows.device());
  TORCH_CHECK(block_size >= 1, "boundfinder round_blocks: `block_size >= 1` must hold, got ", block_size);
  TORCH_CHECK(fields.size() == (fixed ? 4u : 8u), "boundfinder round_blocks: expected ", fixed ? 4 : 8,
              " element fields, got ", fields.size());
  TORCH_CHECK(mode >= kNearest && mode <= kStochastic, "boundfinder round_blocks: mode must be in 0..4, got ", mode);
  torch::NoGradGuard no_grad;
  torch::Tensor out = torch::empty_like(rows);
  if (rows.numel() == 0) return out;
  const Rows L{rows.size(1), block_size, (rows.size(1) + block_size - 1) / block_size};
  const int64_t nblocks = rows.size(0) * L.per_row;
  TORCH_CHECK(nblocks * block_size < (int64_t(1) << 31) || mode != kStochastic,
              "boundfinder round_blocks: stochastic rounding takes at most 2**31 - 1 elements, padded rows included");
  const float* in = rows.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const uint32_t k = static_cast<uint32_t>(key);
  const int32_t e = static_cast<int32_t>(emax);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / block_size);
  if (fixed) {
    const FixedElement p{static_cast<float>(fields[0]), static_cast<float>(fields[1]), static_cast<float>(fields[2]),
                         static_cast<float>(fields[3])};
    at::parallel_for(0, nblocks, grain,
                     [&](int64_t b0, int64_t b1) { round_fixed_blocks(in, o, b0, b1, L, p, e, k, mode); });
  } else {
    uint32_t f[8];
    for (int i = 0; i < 8; ++i) f[i] = static_cast<uint32_t>(static_cast<int64_t>(fields[i]));
    const FloatElement p{f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]};
    at::parallel_for(0, nblocks, grain,
                     [&](int64_t b0, int64_t b1) { round_float_blocks(in, o, b0, b1, L, p, e, k, mode); });
  }
  return out;
}

}  // namespace bf
