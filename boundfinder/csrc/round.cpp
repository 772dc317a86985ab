// Element-wise float rounding of float32 CPU tensors in one pass; straight-through autograd ops that round
// forward and round the gradient backward (one tensor, or a layer's parameters as one node); and nn.Linear,
// nn.Conv{N}d and nn.ReLU layers with their layer-level roundings as one node each, so that emulation adds C++
// autograd nodes only.
// The arithmetic is that of boundfinder/emulation/_round.py's fast rounders (verified bit for bit against
// boundfinder.quantize in tests/emulation/test_native.py); built and loaded by boundfinder/native.py.
#include "native.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <cmath>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

namespace {

using bf::bits;
using bf::from_bits;

enum Kind : int64_t { kIdentity = 0, kWord = 1, kFloat = 2, kHalf = 3 };
enum Overflow : int64_t { kInf = 0, kNan = 1, kSaturate = 2 };

// kWord: a format with float32's exponent range (e8m{M}): integer rounding of the float32 word, dropping
//   `drop` = 23 - M bits (nearest: ties to even, the carry rounds into the next binade or to infinity;
//   truncate: toward zero). NaN inputs get their quiet bit set (rounding a payload could carry into inf).
// kFloat: round to nearest even: q = 2**(max(exponent of x, emin) - M), built as a float32 word (a normal
//   float32 for every format with emin - M >= -126), y = rint(x * (1 / q)) * q (all exact), then the overflow
//   policy where |y| > max_finite. rint is the 2**23 addition (exact ties to even under the default rounding
//   mode) so the loop vectorises without SSE4.1.
// kHalf: IEEE binary16 (fp16) round to nearest even: the hardware conversion to binary16 and back (F16C), where
//   the CPU has it; elsewhere kFloat with the same parameters (the same results).
struct Spec {
  int64_t kind = kIdentity;
  int64_t truncate = 0;
  int64_t drop = 0;
  int64_t min_normal_word = 0;
  int64_t shift = 0;
  double max_finite = 0.0;
  int64_t overflow = kInf;
};

BF_CLONES void round_word(const float* __restrict in, float* __restrict out, int64_t n, int64_t drop, bool truncate) {
  const uint32_t keep = ~((uint32_t(1) << drop) - 1);
  const uint32_t half = (uint32_t(1) << (drop - 1)) - 1;
  const uint32_t* w = reinterpret_cast<const uint32_t*>(in);
  uint32_t* r = reinterpret_cast<uint32_t*>(out);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t x = w[i];
    const uint32_t y = truncate ? (x & keep) : ((((x >> drop) & 1u) + half + x) & keep);
    const uint32_t nan = (((x & 0x7FFFFFFFu) + 0x007FFFFFu) >> 31) * 0x7FC00000u;
    r[i] = y | nan;
  }
}

BF_CLONES void round_float(const float* __restrict in, float* __restrict out, int64_t n, const Spec& s) {
  const uint32_t min_word = static_cast<uint32_t>(s.min_normal_word);
  const uint32_t shift = static_cast<uint32_t>(s.shift);
  const float max_finite = static_cast<float>(s.max_finite);
  const float two23 = 8388608.0f;
  const float inf = std::numeric_limits<float>::infinity();
  const float over = s.overflow == kNan ? std::numeric_limits<float>::quiet_NaN()
                   : s.overflow == kInf ? inf : max_finite;
  const bool keep_sign = s.overflow != kNan;
  for (int64_t i = 0; i < n; ++i) {
    const float x = in[i];
    uint32_t qw = bits(x) & 0x7F800000u;
    qw = (qw < min_word ? min_word : qw) - shift;
    // 1 / q, exact: a power of two whose exponent is the negated one (2**-126 where that would be 2**-127,
    // which only an infinite or NaN input reaches, with M = 1: any finite factor leaves those as they are)
    const uint32_t iw = 0x7F000000u - qw;
    const float q = from_bits(qw);
    const float v = x * from_bits(iw < 0x00800000u ? 0x00800000u : iw);
    const float a = std::fabs(v);
    const float ra = a < two23 ? (a + two23) - two23 : a;  // NaN and inf compare false and stay
    const float y = std::copysign(ra, v) * q;
    const float o = keep_sign ? std::copysign(over, y) : over;
    out[i] = std::fabs(y) > max_finite ? o : y;
  }
}

#ifdef BF_HAS_F16C
__attribute__((target("avx2,f16c"))) void round_half(const float* __restrict in, float* __restrict out,
                                                     int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  if (i < n) {  // the last few elements, through a zero-padded block
    alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tail, in + i, (n - i) * sizeof(float));
    const __m128i h = _mm256_cvtps_ph(_mm256_load_ps(tail), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_store_ps(tail, _mm256_cvtph_ps(h));
    std::memcpy(out + i, tail, (n - i) * sizeof(float));
  }
}

bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return yes;
}
#endif

Spec to_spec(const std::vector<double>& p) {
  Spec s;
  if (p.empty()) return s;
  TORCH_CHECK(p.size() == 7, "boundfinder native rounder: expected 7 parameters, got ", p.size());
  s.kind = static_cast<int64_t>(p[0]);
  s.truncate = static_cast<int64_t>(p[1]);
  s.drop = static_cast<int64_t>(p[2]);
  s.min_normal_word = static_cast<int64_t>(p[3]);
  s.shift = static_cast<int64_t>(p[4]);
  s.max_finite = p[5];
  s.overflow = static_cast<int64_t>(p[6]);
  return s;
}

void check(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(),
              "boundfinder native rounder: expected a float32 CPU tensor, got ", x.scalar_type(), " on ",
              x.device());
}

void round_block(const float* in, float* o, int64_t n, const Spec& s) {
  if (s.kind == kWord) {
    round_word(in, o, n, s.drop, s.truncate != 0);
  } else if (s.kind == kFloat) {
    round_float(in, o, n, s);
  } else if (s.kind == kHalf) {
#ifdef BF_HAS_F16C
    if (has_f16c()) {
      round_half(in, o, n);
      return;
    }
#endif
    round_float(in, o, n, s);
  } else if (o != in) {
    std::memcpy(o, in, n * sizeof(float));
  }
}

// Rounds `x` into `out` in memory order (both dense with the same strides; `out` may be `x` itself).
void round_into(const torch::Tensor& x, torch::Tensor& out, const Spec& s) {
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 16,
                   [&](int64_t begin, int64_t end) { round_block(in + begin, o + begin, end - begin, s); });
}

// Whether rounding `x` would leave every word as it is. Each thread rounds its part block by block into a buffer
// on its stack and stops at the first block that differs (or once another thread found one), so a tensor off
// the grid costs about one block per thread.
bool on_grid(const torch::Tensor& x, const Spec& s) {
  constexpr int64_t kBlock = 512;
  const float* in = x.data_ptr<float>();
  std::atomic<bool> off{false};
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kBlock];
    for (int64_t i = begin; i < end && !off.load(std::memory_order_relaxed); i += kBlock) {
      const int64_t m = std::min(kBlock, end - i);
      round_block(in + i, buf, m, s);
      if (std::memcmp(buf, in + i, m * sizeof(float)) != 0) off.store(true, std::memory_order_relaxed);
    }
  });
  return !off.load();
}

// `x` itself if its elements fill one block of memory (contiguous, channels_last, a transpose), else a
// contiguous copy: the kernels run over that block in memory order.
torch::Tensor dense(const torch::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

// A rounded copy with the input's layout (as torch's element-wise ops keep a dense layout, and the Python
// rounders with them: a channels_last activation stays channels_last, and the next layer computes the same).
torch::Tensor round_out(const torch::Tensor& x, const Spec& s) {
  check(x);
  const torch::Tensor c = dense(x);
  torch::Tensor out = torch::empty_like(c);  // (preserve_format: the same strides for a dense tensor)
  round_into(c, out, s);
  return out;
}

torch::Tensor round_tensor(const torch::Tensor& x, const std::vector<double>& params) {
  torch::NoGradGuard no_grad;
  return round_out(x, to_spec(params));
}

void round_tensor_(torch::Tensor& x, const std::vector<double>& params) {
  check(x);
  TORCH_CHECK(x.is_contiguous(), "boundfinder native rounder: in-place rounding needs a contiguous tensor");
  torch::NoGradGuard no_grad;
  round_into(x, x, to_spec(params));
  torch::autograd::impl::bump_version(x);  // as any in-place op: autograd and the version marks see the change
}

// Gradients come from the autograd engine: a batched one (torch.autograd.grad(..., is_grads_batched=True), a
// torch.func transform) has no memory of its own to round; say what to do instead.
void check_grad(const torch::Tensor& g) {
  TORCH_CHECK(g.has_storage() && g.scalar_type() == torch::kFloat32 && g.device().is_cpu(),
              "boundfinder native rounder: the gradient reaching an emulated layer is not a plain float32 CPU "
              "tensor (a batched gradient: is_grads_batched=True or a torch.func transform?); set "
              "BOUNDFINDER_NATIVE=0 to emulate through the Python path there");
}

// A gradient rounded: `g` itself when it is already on the grid (no copy), else a rounded copy.
torch::Tensor round_grad(const torch::Tensor& g, const Spec& s) {
  check_grad(g);
  const torch::Tensor c = dense(g);
  return on_grid(c, s) ? c : round_out(c, s);
}

// Whether `t` can be rounded in place without anyone seeing it: a dense float32 CPU tensor not tracked by
// autograd that covers its whole storage (its layout is what a rounded copy's would be), held by at most
// `max_refs` handles (the caller's), whose storage nobody else shares and was allocated by torch (resizable:
// not memory borrowed from NumPy or a blob). Autograd's AccumulateGrad makes the same kind of test before it
// steals a gradient instead of copying it.
bool sole_owner(const torch::Tensor& t, int64_t max_refs) {
  return t.defined() && t.has_storage() && t.scalar_type() == torch::kFloat32 && t.device().is_cpu() &&
         !t.requires_grad() && t.use_count() <= max_refs && t.storage().use_count() == 1 && t.storage().resizable() &&
         t.storage_offset() == 0 && t.is_non_overlapping_and_dense() &&
         static_cast<int64_t>(t.storage().nbytes()) == t.numel() * static_cast<int64_t>(sizeof(float));
}

// Rounds every element of a tensor that covers its storage, in place.
void round_storage(torch::Tensor& t, const Spec& s) {
  float* p = t.data_ptr<float>();
  at::parallel_for(0, t.numel(), 1 << 16,
                   [&](int64_t begin, int64_t end) { round_block(p + begin, p + begin, end - begin, s); });
}

// A gradient rounded, in place when `g` has no other holder than the caller's `max_refs` handles (a fresh
// result, or a gradient the autograd engine hands over and drops after this node): no allocation, no check.
// Under a backward pass that builds a graph (create_graph=True: a gradient penalty), a gradient that requires
// grad is rounded by a straight-through node, so the double backward treats the rounding as the identity (as the
// Python path does) instead of losing the graph.
bool builds_graph(const torch::Tensor& g) { return g.requires_grad() && torch::GradMode::is_enabled(); }
torch::Tensor round_straight_through(const torch::Tensor& g, const Spec& s);

torch::Tensor round_grad_owned(torch::Tensor g, const Spec& s, int64_t max_refs) {
  if (s.kind == kIdentity) return g;
  if (builds_graph(g)) return round_straight_through(g, s);
  if (sole_owner(g, max_refs)) {
    round_storage(g, s);
    return g;
  }
  return round_grad(g, s);
}

torch::Tensor round_grad_py(const torch::Tensor& g, const std::vector<double>& params) {
  torch::NoGradGuard no_grad;
  return round_grad(g, to_spec(params));
}

// A hook on `x` (which requires grad) that rounds the gradient with respect to `x` (passing it on when it is
// on the grid already): the rounding of a layer's output gradient when the output itself needs no rounding.
void hook_grad(torch::Tensor& x, const std::vector<double>& params) {
  const Spec s = to_spec(params);
  x.register_hook([s](const torch::Tensor& g) {
    if (builds_graph(g)) return round_straight_through(g, s);
    torch::NoGradGuard no_grad;
    return round_grad(g, s);
  });
}

// Handles on a gradient the autograd engine holds while a C++ node's backward runs (CppNode::apply's list of
// inputs), besides the one that node's backward takes over; tests/emulation/test_native.py checks that a
// gradient anyone else can see is never rounded in place.
constexpr int64_t kEngineRefs = 1;

class RoundSTE : public torch::autograd::Function<RoundSTE> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<double>& fwd, const std::vector<double>& bwd) {
    ctx->saved_data["bwd"] = c10::IValue(c10::List<double>(bwd));
    return round_out(x, to_spec(fwd));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::Tensor g = std::move(grads[0]);
    std::vector<double> bwd = ctx->saved_data["bwd"].toDoubleVector();
    if (!g.defined() || bwd.empty()) return {g, torch::Tensor(), torch::Tensor()};
    // The engine keeps one handle of its own while this runs (two with a post hook on the node, which then
    // reads the gradient: not in place); any other holder (a tensor hook that kept it, a view of it elsewhere)
    // makes a copy. A gradient already on the grid that cannot be rounded in place is passed on as it is.
    return {round_grad_owned(std::move(g), to_spec(bwd), kEngineRefs + 1), torch::Tensor(), torch::Tensor()};
  }
};

std::vector<double> to_params(const Spec& s) {
  return {static_cast<double>(s.kind),     static_cast<double>(s.truncate), static_cast<double>(s.drop),
          static_cast<double>(s.min_normal_word), static_cast<double>(s.shift), s.max_finite,
          static_cast<double>(s.overflow)};
}

torch::Tensor round_straight_through(const torch::Tensor& g, const Spec& s) {
  return RoundSTE::apply(g, to_params(s), std::vector<double>());
}

// Forward: `x` rounded with `fwd` (a copy when `fwd` is empty); backward: the gradient rounded with `bwd`
// (passed through when `bwd` is empty): the straight-through estimator with a rounded gradient.
torch::Tensor round_ste(const torch::Tensor& x, const std::vector<double>& fwd, const std::vector<double>& bwd) {
  return RoundSTE::apply(x, fwd, bwd);
}

// Autograd nodes are held by std::shared_ptr in older torch releases and by c10::intrusive_ptr in newer ones.
template <typename Ptr>
struct NodeMaker;
template <typename T>
struct NodeMaker<std::shared_ptr<T>> {
  template <typename N>
  static std::shared_ptr<N> make() { return std::make_shared<N>(); }
};
template <typename T>
struct NodeMaker<c10::intrusive_ptr<T>> {
  template <typename N>
  static c10::intrusive_ptr<N> make() { return c10::make_intrusive<N>(); }
};

// The backward of round_params: each parameter's gradient straight through, rounded (in place where the engine
// hands it over alone), and the node's generation written to `consumed`.
struct RoundParamsBackward : public torch::autograd::Node {
  Spec bwd;
  torch::Tensor consumed;
  int64_t generation = 0;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    int64_t* latest = consumed.data_ptr<int64_t>();
    *latest = std::max(*latest, generation);  // (an older graph run again must not hide a newer one's use)
    torch::autograd::variable_list out(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined() || !should_compute_output(i)) continue;
      // (the engine moves the gradients in, and keeps a copy only when the node has post hooks)
      out[i] = round_grad_owned(std::move(grads[i]), bwd, 1);
    }
    return out;
  }

  std::string name() const override { return "RoundParamsBackward"; }
};

// A layer's parameters rounded with `fwd` for use in its forward, as one autograd node: the straight-through
// estimator whose backward rounds each parameter's gradient with `bwd` (the sum over every use of the rounded
// tensor in the graph, as autograd accumulates it). When the backward pass runs, it writes `generation` into
// `consumed` (an int64 CPU tensor), so the caller's cache of rounded parameters knows this graph was used.
std::vector<torch::Tensor> round_params(const std::vector<torch::Tensor>& params, const std::vector<double>& fwd,
                                        const std::vector<double>& bwd, const torch::Tensor& consumed,
                                        int64_t generation) {
  TORCH_CHECK(consumed.scalar_type() == torch::kInt64 && consumed.device().is_cpu() && consumed.numel() >= 1,
              "boundfinder native rounder: `consumed` must be an int64 CPU tensor");
  const Spec s = to_spec(fwd);
  std::vector<torch::Tensor> out;
  out.reserve(params.size());
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : params) out.push_back(round_out(p, s));
  }
  bool any = false;
  for (const auto& p : params) any = any || p.requires_grad();
  if (!any || !torch::GradMode::is_enabled()) return out;
  auto node = NodeMaker<decltype(torch::autograd::Edge::function)>::make<RoundParamsBackward>();
  node->bwd = to_spec(bwd);
  node->consumed = consumed;
  node->generation = generation;
  node->set_next_edges(torch::autograd::collect_next_edges(params));
  for (auto& o : out) torch::autograd::create_gradient_edge(o, node);
  return out;
}

// Layer-level rounding of an nn.Linear on a 2-D input in one autograd node: forward rounds the input, weight
// and bias, computes the layer as torch does (at::linear: addmm, or mm without a bias) and rounds the output;
// backward rounds the output gradient, computes the input, weight and bias gradients with the products and
// the reduction torch's own addmm / mm backward uses (mm_mat1_backward / mm_mat2_backward for a row-major
// input and a transposed weight; sum_to for the bias), and rounds each. Same results as rounding around
// torch's autograd, in one node instead of six, with no Python in the backward pass.
// `specs`: float64 [7, 7], one row of parameters per role (kind 0: nothing to round), in the order below.
enum Role : int64_t { kInput = 0, kWeight, kBias, kActivation, kGradOutput, kGradInput, kWeightGrad, kRoles };

Spec row(const torch::Tensor& specs, int64_t r) {
  const double* p = specs.data_ptr<double>() + r * 7;
  return to_spec(std::vector<double>(p, p + 7));
}

torch::Tensor maybe_round(const torch::Tensor& t, const Spec& s) {
  return s.kind == kIdentity ? t : round_out(t, s);
}

// What a fused layer's forward computes on: its input (rounded unless already on the grid), weight and bias
// rounded with their rows, and the bias as at::linear / at::convolution take it.
struct LayerOperands {
  torch::Tensor x, w, b;
  bool has_bias;
  c10::optional<torch::Tensor> bias() const { return has_bias ? c10::optional<torch::Tensor>(b) : c10::nullopt; }
};

LayerOperands round_operands(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                             const torch::Tensor& specs, bool round_input) {
  const bool has_bias = b.has_value() && b->defined();
  return {round_input ? maybe_round(x, row(specs, kInput)) : x, maybe_round(w, row(specs, kWeight)),
          has_bias ? maybe_round(*b, row(specs, kBias)) : torch::Tensor(), has_bias};
}

// A layer's fresh result rounded with its activation row: in place when nobody else holds it.
torch::Tensor round_result(torch::Tensor y, const torch::Tensor& specs) {
  const Spec act = row(specs, kActivation);
  if (act.kind == kIdentity) return y;
  if (!sole_owner(y, 1)) return round_out(y, act);
  round_storage(y, act);
  return y;
}

// What every fused layer's backward needs: the operands it computed on, its rows and its bias's shape.
void save_operands(torch::autograd::AutogradContext* ctx, const LayerOperands& op, const torch::Tensor& specs,
                   const c10::optional<torch::Tensor>& b) {
  ctx->save_for_backward({op.x, op.w});
  ctx->saved_data["specs"] = specs;
  ctx->saved_data["has_bias"] = op.has_bias;
  if (op.has_bias) ctx->saved_data["bias_sizes"] = b->sizes().vec();
}

class FusedLinear : public torch::autograd::Function<FusedLinear> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                               const torch::Tensor& specs, bool round_input) {
    const LayerOperands op = round_operands(x, w, b, specs, round_input);
    torch::Tensor y = round_result(at::linear(op.x, op.w, op.bias()), specs);
    save_operands(ctx, op, specs, b);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& xr = saved[0];
    const torch::Tensor& wr = saved[1];
    const torch::Tensor specs = ctx->saved_data["specs"].toTensor();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    torch::Tensor gx, gw, gb;
    if (grads[0].defined()) {
      const torch::Tensor g = round_grad_owned(std::move(grads[0]), row(specs, kGradOutput), kEngineRefs + 1);
      // torch's mm backward with mat1 = xr and mat2 = wr.t(): a column-major operand gets its gradient
      // computed column-major (mm_mat1_backward / mm_mat2_backward), and so here
      const torch::Tensor mat2 = wr.t();
      if (ctx->needs_input_grad(0)) {
        const bool col = xr.stride(0) == 1 && xr.stride(1) == xr.size(0);
        // (each product is this node's own fresh tensor: rounded in place, before any transposed view of it)
        const Spec s = row(specs, kGradInput);
        gx = col ? round_grad_owned(mat2.mm(g.t()), s, 1).t() : round_grad_owned(g.mm(mat2.t()), s, 1);
      }
      if (ctx->needs_input_grad(1)) {
        const bool col = mat2.stride(0) == 1 && mat2.stride(1) == mat2.size(0);
        const Spec s = row(specs, kWeightGrad);
        gw = col ? round_grad_owned(g.t().mm(xr), s, 1) : round_grad_owned(xr.t().mm(g), s, 1).t();
      }
      if (has_bias && ctx->needs_input_grad(2)) {
        gb = round_grad_owned(at::sum_to(g, ctx->saved_data["bias_sizes"].toIntVector()), row(specs, kWeightGrad),
                              1);
      }
    }
    return {gx, gw, gb, torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor fused_linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                           const torch::Tensor& specs, bool round_input) {
  return FusedLinear::apply(x, w, b, specs, round_input);
}

// Layer-level rounding of an nn.Conv{1,2,3}d (zero padding, batched input) in one autograd node, as FusedLinear
// does for nn.Linear: forward rounds the input, weight and bias, computes at::convolution (what F.conv{N}d
// dispatches to) and rounds the output in place; backward rounds the output gradient, computes the gradients
// with at::convolution_backward and the mask torch's own ConvolutionBackward0 passes (the inputs that need a
// gradient), and rounds each in place.
class FusedConv : public torch::autograd::Function<FusedConv> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                               const torch::Tensor& specs, std::vector<int64_t> stride, std::vector<int64_t> padding,
                               std::vector<int64_t> dilation, int64_t groups, bool round_input) {
    const LayerOperands op = round_operands(x, w, b, specs, round_input);
    const std::vector<int64_t> output_padding(stride.size(), 0);
    torch::Tensor y = round_result(at::convolution(op.x, op.w, op.bias(), stride, padding, dilation,
                                                   /*transposed=*/false, output_padding, groups),
                                   specs);
    save_operands(ctx, op, specs, b);
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor specs = ctx->saved_data["specs"].toTensor();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    torch::Tensor gx, gw, gb;
    if (grads[0].defined()) {
      const torch::Tensor g = round_grad_owned(std::move(grads[0]), row(specs, kGradOutput), kEngineRefs + 1);
      const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
      const std::vector<int64_t> output_padding(stride.size(), 0);
      c10::optional<std::vector<int64_t>> bias_sizes;
      if (has_bias) bias_sizes = ctx->saved_data["bias_sizes"].toIntVector();
      const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                        has_bias && ctx->needs_input_grad(2)};
      auto [dx, dw, db] = at::convolution_backward(
          g, saved[0], saved[1], bias_sizes ? c10::optional<at::IntArrayRef>(*bias_sizes) : c10::nullopt, stride,
          ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), /*transposed=*/false,
          output_padding, ctx->saved_data["groups"].toInt(), mask);
      if (mask[0]) gx = round_grad_owned(std::move(dx), row(specs, kGradInput), 1);
      if (mask[1]) gw = round_grad_owned(std::move(dw), row(specs, kWeightGrad), 1);
      if (mask[2]) gb = round_grad_owned(std::move(db), row(specs, kWeightGrad), 1);
    }
    return {gx, gw, gb, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

// Layer-level rounding of an nn.ReLU (not in place) in one autograd node: forward rounds the input, computes
// at::relu and rounds the output; backward rounds the output gradient, computes torch's ReluBackward0
// (threshold_backward on the unrounded result) and rounds the input gradient. Rows as for FusedLinear (the
// parameter rows unused); emulation leaves the roundings a ReLU keeps on the grid by itself as kind 0.
class FusedReLU : public torch::autograd::Function<FusedReLU> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& specs, bool round_input) {
    const torch::Tensor xr = round_input ? maybe_round(x, row(specs, kInput)) : x;
    torch::Tensor y = at::relu(xr);
    ctx->save_for_backward({y});
    ctx->saved_data["specs"] = specs;
    const Spec act = row(specs, kActivation);
    // (a rounded copy: backward needs the result as ReLU computed it)
    return act.kind == kIdentity ? y : round_out(y, act);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const torch::Tensor specs = ctx->saved_data["specs"].toTensor();
    const torch::Tensor g = round_grad_owned(std::move(grads[0]), row(specs, kGradOutput), kEngineRefs + 1);
    torch::Tensor gx = at::threshold_backward(g, ctx->get_saved_variables()[0], 0);
    return {round_grad_owned(std::move(gx), row(specs, kGradInput), 1), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor fused_relu(const torch::Tensor& x, const torch::Tensor& specs, bool round_input) {
  return FusedReLU::apply(x, specs, round_input);
}

torch::Tensor fused_conv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                         const torch::Tensor& specs, std::vector<int64_t> stride, std::vector<int64_t> padding,
                         std::vector<int64_t> dilation, int64_t groups, bool round_input) {
  return FusedConv::apply(x, w, b, specs, std::move(stride), std::move(padding), std::move(dilation), groups,
                          round_input);
}

// A 64-bit fingerprint of a tensor's bytes (a contiguous CPU tensor): emulation keys its cache of rounded
// weights on it, since writes through `param.data` change the values without moving the version counter.
// Eight polynomial lanes h = (h + word) * K over 8-byte words (K odd, so a change of any one word always
// changes its lane), then the lanes, the tail bytes and the byte count mixed. Not cryptographic: it detects
// changes, not adversaries. About a load and a multiply per 8 bytes: near memory speed.
int64_t fingerprint(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "fingerprint needs a contiguous CPU tensor");
  const auto* bytes = static_cast<const unsigned char*>(x.data_ptr());
  const size_t n = static_cast<size_t>(x.numel()) * x.element_size();
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t lane[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const size_t words = n / 8;
  size_t i = 0;
  for (; i + 8 <= words; i += 8) {
    uint64_t w[8];
    std::memcpy(w, bytes + 8 * i, 64);
    for (int k = 0; k < 8; ++k) lane[k] = (lane[k] + w[k]) * kMul;
  }
  for (; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, bytes + 8 * i, 8);
    lane[0] = (lane[0] + w) * kMul;
  }
  uint64_t tail = 0;
  if (n > 8 * words) std::memcpy(&tail, bytes + 8 * words, n - 8 * words);
  uint64_t h = static_cast<uint64_t>(n);
  for (int k = 0; k < 8; ++k) {
    h = (h ^ lane[k]) * kMul;
    h ^= h >> 32;
  }
  h = (h ^ tail) * kMul;
  h ^= h >> 29;
  return static_cast<int64_t>(h);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("round", &round_tensor, "x rounded to a format (a new tensor)");
  m.def("round_", &round_tensor_, "x rounded to a format in place");
  m.def("round_grad", &round_grad_py, "g rounded, or g itself when it is on the grid already");
  m.def("hook_grad", &hook_grad, "register a hook rounding x's gradient");
  m.def("fused_linear", &fused_linear, "an nn.Linear with its layer-level roundings, one autograd node");
  m.def("round_params", &round_params, "parameters rounded forward, their gradients rounded backward (one node)");
  m.def("fused_relu", &fused_relu, "an nn.ReLU with its layer-level roundings, one autograd node");
  m.def("fused_conv", &fused_conv, "an nn.Conv{1,2,3}d with its layer-level roundings, one autograd node");
  m.def("round_ste", &round_ste, "x rounded forward, its gradient rounded backward");
  m.def("fingerprint", &fingerprint, "a 64-bit hash of a contiguous CPU tensor's bytes");
  m.def("round_blocks", &bf::round_blocks, "rows rounded in MX blocks, each block with its shared scale");
  m.def("round_affine_rows", &bf::round_affine_rows, "rows quantized to integers with their own min/max scales");
  m.def("exponent_histogram", &bf::exponent_histogram, "counts of the binary exponents of finite nonzero elements");
  m.def("dynamic_frac_bits", &bf::dynamic_frac_bits, "dynamic fixed point's fraction length by the overflow rate");
}
