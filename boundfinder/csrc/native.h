// Shared by the native kernels (round.cpp, blocks.cpp): function multiversioning, float32 words, and the
// entry points one file defines and the other registers.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// The loops are compiled for AVX-512, for AVX2 and for the baseline, picked at load time (GCC's function
// multiversioning); -fno-trapping-math (native.py) lets them vectorise their selects. Neither changes a result:
// no reassociation, no contraction, default rounding mode.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BF_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define BF_HAS_F16C 1
#else
#define BF_CLONES
#endif

namespace bf {

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Everything a loop calls is inlined into it, in each of its clones: a call left in a loop stops vectorisation.
#define BF_INLINE inline __attribute__((always_inline))

constexpr int kRandBits = 30;  // kernels.RAND_BITS
constexpr int kNearest = 0, kTruncate = 1, kUp = 2, kDown = 3, kStochastic = 4;  // kernels.MODE

// kernels.rand_like's stream: 30 bits of lowbias32(index ^ key), index the element's flat index.
BF_INLINE uint32_t random_bits(uint32_t index, uint32_t key) {
  uint32_t h = index ^ key;
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return h & ((1u << kRandBits) - 1);
}

constexpr uint32_t kAbs = 0x7FFFFFFFu;  // a float32 word's magnitude bits

// kernels.round_to_integer: y rounded to an integer-valued float with mode M (random bits for stochastic).
template <int M>
BF_INLINE float to_integer(float y, uint32_t rbits) {
  if (M == kNearest) return std::nearbyint(y);
  if (M == kTruncate) return std::trunc(y);
  if (M == kUp) return std::ceil(y);
  if (M == kDown) return std::floor(y);
  const float lo = std::floor(y);
  const float frac = (y - lo) * static_cast<float>(1 << kRandBits);  // exact: a power-of-two scale of y - lo
  return lo + ((static_cast<int32_t>(frac) + static_cast<int32_t>(rbits)) >= (1 << kRandBits) ? 1.0f : 0.0f);
}

// floor(log2(a)) of a positive word under 2**23 (a float32 subnormal's significand): the exponent of its exact
// conversion to float (a vector instruction, where a count of leading zeros is not on AVX2).
BF_INLINE int32_t subnormal_log2(uint32_t a) {
  return static_cast<int32_t>(bits(static_cast<float>(static_cast<int32_t>(a))) >> 23) - 127;
}

// blocks.cpp: MX block rounding (see there).
torch::Tensor round_blocks(const torch::Tensor& rows, int64_t block_size, const std::vector<double>& fields,
                           bool fixed, int64_t mode, int64_t emax, int64_t key);

// scales.cpp: formats whose scale is a reduction (see there).
std::tuple<torch::Tensor, bool> round_affine_rows(const torch::Tensor& rows, int64_t qmin, int64_t qmax,
                                                  bool symmetric, int64_t symmetric_zero_point, int64_t mode,
                                                  int64_t key);
torch::Tensor exponent_histogram(const torch::Tensor& x);
int64_t dynamic_frac_bits(const torch::Tensor& x, int64_t allowed, int64_t word_bits);

}  // namespace bf
