// Shared by the native kernels (round.cpp, blocks.cpp): function multiversioning, float32 words, and the
// entry points one file defines and the other registers.
#pragma once

#include <torch/extension.h>

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

// blocks.cpp: MX block rounding (see there).
torch::Tensor round_blocks(const torch::Tensor& blocks, const std::vector<double>& fields, bool fixed, int64_t mode,
                           int64_t emax, int64_t key);

}  // namespace bf
