// The whole decoder stack for a few new tokens per sequence (a decode step, a speculative verify), in one call.
//
// Why (measured on a 2-core Zen 4, SmolLM2-135M, one sequence): the eager PyTorch step ran ~10 ms a token, of which
// the 4-bit matmuls, the attention and the LM head are ~3.5 ms; the rest was the dispatch of ~14 small ops per layer
// (norms, rotary, cache writes, SiLU, residual adds) and their Python. Here a layer is the same sequence of steps in
// C++, on corral's own int4 and attention kernels, and only the embedding, the final norm and the head stay in Python.
//
// `DecodePlan` holds each layer's weights (the 4-bit fused q/k/v and gate/up, o and down, both norms; made once by
// corral/model/kernels.py) and the KV cache's per-layer buffers. `forward(x, cos, sin, positions, slots)`:
//   x (B, T, hidden) fp32 embeddings → hidden states after the last layer (before the final norm), B sequences of
//   T new tokens at `positions` (B, T), in cache slots `slots` (B,) or 0..B-1; cos/sin as the Python path makes them
//   (B, 1, T, head_dim, sin's first half negated). Each token's keys and values are written at its position before
//   attention reads the cache, as in LlamaForCausalLM.
// Every step works row by row in a fixed order (the int4 and attention kernels already do), so a sequence gets the
// same bits alone or in a batch: the engine's batch invariance holds on this path too.

#include <torch/custom_class.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "corral_kernels.h"

namespace corral {
namespace {

constexpr int kPerLayer = 10;  // in_norm, qkv packed, qkv scales, o packed, o scales, post_norm, gu p/s, down p/s

#ifdef CORRAL_VNNI

// y = x / rms(x) * w, row by row, in fp32 (sum of squares in 16 lanes, then a fixed pairwise order).
void rms_norm(const float* x, const float* w, float* y, int64_t M, int64_t n, float eps) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * n;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 v = _mm512_loadu_ps(xr + i);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    float ss = _mm512_reduce_add_ps(acc);
    for (; i < n; ++i) ss += xr[i] * xr[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t j = 0; j < n; ++j) y[m * n + j] = xr[j] * r * w[j];
  }
}

// Rotate-half RoPE in place on `heads` heads of D values: p[d] = p[d] cos[d] + p[(d + D/2) % D] sin[d].
void rope(float* p, int64_t heads, int64_t D, const float* c, const float* s) {
  float tmp[512];
  for (int64_t h = 0; h < heads; ++h, p += D) {
    std::memcpy(tmp, p, D * sizeof(float));
    for (int64_t d = 0; d < D; ++d) {
      const float a = tmp[d] * c[d], b = tmp[(d + D / 2) % D] * s[d];
      p[d] = a + b;
    }
  }
}

// out[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u, with exp(-|g|) from the shared polynomial.
void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));  // exp(-|x|)
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 num = _mm512_mask_blend_ps(pos, e, one);  // sigmoid = 1/(1+e) for x >= 0, e/(1+e) below
    const __m512 sig = _mm512_div_ps(num, _mm512_add_ps(one, e));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(x, sig), _mm512_loadu_ps(u + i)));
  }
  for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

template <typename T>
void write_row(T* dst, const float* src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(src[d]);
}

#endif

struct DecodePlan : torch::CustomClassHolder {
  std::vector<at::Tensor> w, k, v;
  int64_t H, n_kv, D, hidden, inter, layers;
  double eps;

  DecodePlan(std::vector<at::Tensor> weights, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, double rms_eps)
      : w(std::move(weights)), H(n_heads), n_kv(n_kv_heads), D(head_dim), eps(rms_eps) {
    TORCH_CHECK(!w.empty() && w.size() % kPerLayer == 0, "DecodePlan: ", kPerLayer, " tensors per layer");
    TORCH_CHECK(D % 2 == 0 && D <= 512 && H % n_kv == 0, "DecodePlan: head shapes");
    layers = static_cast<int64_t>(w.size()) / kPerLayer;
    hidden = w[0].numel();
    inter = w[6].size(0) * 8;  // gate and up stacked: 2 * inter rows in tiles of 16
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor* L = &w[l * kPerLayer];
      for (int i : {0, 5}) TORCH_CHECK(L[i].scalar_type() == at::kFloat && L[i].numel() == hidden, "DecodePlan: norms");
      for (int i : {1, 3, 6, 8})
        TORCH_CHECK(L[i].scalar_type() == at::kByte && L[i].is_contiguous() && L[i + 1].is_contiguous() &&
                    L[i + 1].scalar_type() == at::kHalf, "DecodePlan: packed int4 weights, fp16 scales");
      TORCH_CHECK(L[1].size(0) * 16 == (H + 2 * n_kv) * D && L[1].size(1) * 32 == hidden, "DecodePlan: qkv shape");
      TORCH_CHECK(L[3].size(0) * 16 == hidden && L[3].size(1) * 32 == H * D, "DecodePlan: o shape");
      TORCH_CHECK(L[6].size(0) * 16 == 2 * inter && L[6].size(1) * 32 == hidden, "DecodePlan: gate/up shape");
      TORCH_CHECK(L[8].size(0) * 16 == hidden && L[8].size(1) * 32 == inter, "DecodePlan: down shape");
    }
  }

  void set_cache(std::vector<at::Tensor> k_cache, std::vector<at::Tensor> v_cache) {
    TORCH_CHECK((k_cache.empty() || static_cast<int64_t>(k_cache.size()) == layers) && v_cache.size() == k_cache.size(),
                "DecodePlan: one key and one value buffer per layer (or none, to let them go)");
    for (size_t i = 0; i < k_cache.size(); ++i) {
      const bool q8 = k_cache[i].scalar_type() == at::kChar;
      TORCH_CHECK(k_cache[i].is_contiguous() && v_cache[i].is_contiguous() && k_cache[i].dim() == 4 &&
                  k_cache[i].size(1) == n_kv && k_cache[i].size(3) == (q8 ? q8_row_bytes(D) : D) &&
                  (!q8 || D % 32 == 0) && v_cache[i].sizes() == k_cache[i].sizes() &&
                  v_cache[i].scalar_type() == k_cache[i].scalar_type(), "DecodePlan: cache buffers");
    }
    k = std::move(k_cache);
    v = std::move(v_cache);
  }

  at::Tensor forward(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions,
                     const std::optional<at::Tensor>& slots_opt) {
#ifdef CORRAL_VNNI
    TORCH_CHECK(!k.empty(), "DecodePlan: set_cache first");
    TORCH_CHECK(x_in.dim() == 3 && x_in.size(2) == hidden && x_in.scalar_type() == at::kFloat,
                "DecodePlan: x (B, T, hidden) float32");
    const int64_t B = x_in.size(0), T = x_in.size(1), M = B * T, L = k[0].size(2);
    TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kFloat &&
                sin.scalar_type() == at::kFloat && cos.numel() == M * D && sin.numel() == M * D,
                "DecodePlan: cos/sin (B, 1, T, head_dim) float32");
    TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.numel() == M,
                "DecodePlan: positions (B, T) int64");
    at::Tensor slots;
    if (slots_opt.has_value() && slots_opt->defined()) {
      slots = slots_opt->contiguous();
      TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == B, "DecodePlan: slots (B,) int64");
    } else {
      TORCH_CHECK(B <= k[0].size(0), "DecodePlan: more rows than cache slots");
    }
    const int64_t* pos = positions.data_ptr<int64_t>();
    const int64_t* sl = slots.defined() ? slots.data_ptr<int64_t>() : nullptr;
    for (int64_t m = 0; m < M; ++m) TORCH_CHECK(pos[m] >= 0 && pos[m] < L, "DecodePlan: position past the cache");

    const auto f32 = x_in.options().dtype(at::kFloat);
    at::Tensor x = x_in.contiguous().clone();
    const int64_t nqkv = (H + 2 * n_kv) * D, kmax = std::max<int64_t>(std::max(hidden, inter), H * D);
    at::Tensor h = at::empty({M, hidden}, f32), qkv = at::empty({M, nqkv}, f32);
    at::Tensor tmp = at::empty({M, hidden}, f32), gu = at::empty({M, 2 * inter}, f32), act = at::empty({M, inter}, f32);
    at::Tensor att = at::empty({B, H, T, D}, f32);
    at::Tensor q8 = at::empty({M, kmax}, x.options().dtype(at::kChar));
    at::Tensor dx = at::empty({M, kmax / 32}, f32), dsum = at::empty({M, kmax / 32}, f32);
    at::Tensor lengths = positions.reshape({B, T}) + 1;
    float *xp = x.data_ptr<float>(), *hp = h.data_ptr<float>(), *qkvp = qkv.data_ptr<float>();
    float *tp = tmp.data_ptr<float>(), *gup = gu.data_ptr<float>(), *ap = act.data_ptr<float>();
    int8_t* qp = q8.data_ptr<int8_t>();
    float *dxp = dx.data_ptr<float>(), *dsp = dsum.data_ptr<float>();
    const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
    // q as a (B, H, T, D) view of the projections (row m = b*T + t holds [q heads | k heads | v heads])
    at::Tensor qview = qkv.view({B, T, H + 2 * n_kv, D}).permute({0, 2, 1, 3}).narrow(1, 0, H);
    const float fe = static_cast<float>(eps);

    auto linear = [&](const float* in, int64_t K, const at::Tensor& packed, const at::Tensor& scales, int64_t N,
                      float* out) {
      quantize_rows(in, M, K, qp, dxp, dsp);
      int4_matmul(qp, dxp, dsp, M, K, packed.data_ptr<uint8_t>(), scales.data_ptr<c10::Half>(), N, out);
    };

    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor* W = &w[l * kPerLayer];
      rms_norm(xp, W[0].data_ptr<float>(), hp, M, hidden, fe);
      linear(hp, hidden, W[1], W[2], nqkv, qkvp);
      const at::Tensor &kc = k[l], &vc = v[l];
      for (int64_t m = 0; m < M; ++m) {
        float* row = qkvp + m * nqkv;
        rope(row, H + n_kv, D, cp + m * D, sp + m * D);  // q and k heads, contiguous
        const int64_t slot = sl ? sl[m / T] : m / T;
        for (int64_t g = 0; g < n_kv; ++g) {
          const int64_t off = ((slot * n_kv + g) * L + pos[m]) * kc.stride(2);
          const float* ks = row + (H + g) * D;
          const float* vs = row + (H + n_kv + g) * D;
          switch (kc.scalar_type()) {
            case at::kFloat:
              write_row(kc.data_ptr<float>() + off, ks, D);
              write_row(vc.data_ptr<float>() + off, vs, D);
              break;
            case at::kHalf:
              write_row(kc.data_ptr<c10::Half>() + off, ks, D);
              write_row(vc.data_ptr<c10::Half>() + off, vs, D);
              break;
            case at::kBFloat16:
              write_row(kc.data_ptr<c10::BFloat16>() + off, ks, D);
              write_row(vc.data_ptr<c10::BFloat16>() + off, vs, D);
              break;
            case at::kChar:
              q8_write_row(kc.data_ptr<int8_t>() + off, ks, D);
              q8_write_row(vc.data_ptr<int8_t>() + off, vs, D);
              break;
            default: TORCH_CHECK(false, "DecodePlan: cache dtype must be float32, float16, bfloat16 or int8 (q8_0)");
          }
        }
      }
      decode_attention_into(qview, kc, vc, lengths, slots, 1.0 / std::sqrt(static_cast<double>(D)), att);
      const float* attp = att.data_ptr<float>();
      at::Tensor att_rows;
      if (T > 1) {  // (B, H, T, D) → (B, T, H, D) rows for o_proj
        att_rows = att.transpose(1, 2).contiguous();
        attp = att_rows.data_ptr<float>();
      }
      linear(attp, H * D, W[3], W[4], hidden, tp);
      for (int64_t i = 0; i < M * hidden; ++i) xp[i] += tp[i];
      rms_norm(xp, W[5].data_ptr<float>(), hp, M, hidden, fe);
      linear(hp, hidden, W[6], W[7], 2 * inter, gup);
      for (int64_t m = 0; m < M; ++m)
        silu_mul(gup + m * 2 * inter, gup + m * 2 * inter + inter, ap + m * inter, inter);
      linear(ap, inter, W[8], W[9], hidden, tp);
      for (int64_t i = 0; i < M * hidden; ++i) xp[i] += tp[i];
    }
    return x;
#else
    TORCH_CHECK(false, "DecodePlan: this build has no AVX-512 VNNI");
#endif
  }
};

}  // namespace
}  // namespace corral

TORCH_LIBRARY_FRAGMENT(corral, m) {
  m.class_<corral::DecodePlan>("DecodePlan")
      .def(torch::init<std::vector<at::Tensor>, int64_t, int64_t, int64_t, double>())
      .def("set_cache", &corral::DecodePlan::set_cache)
      .def("forward", &corral::DecodePlan::forward);
}
