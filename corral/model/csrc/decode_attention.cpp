// Decode attention on CPU: a few new query tokens per sequence against the static KV cache.
//
// Why a kernel of our own (measured on a 2-core Zen 4, 16 sequences x ~190 keys, SmolLM2-135M): the batched-matmul
// formulation reads the cache at ~16 GB/s (MKL is inefficient at 3 query rows per KV head) and pads every sequence
// to the longest; this loop reads each sequence's own keys once, at close to the machine's read bandwidth.
//
// One work item = (sequence b, KV head g, new token t). It computes the n_rep query heads that share head g:
//   scores[r][s] = q[b, g*n_rep + r, t] . K[slot_b, g, s] * scale     for s < lengths[b, t]
//   out[b, g*n_rep + r, t] = softmax_s(scores[r]) @ V[slot_b, g, :lengths[b, t]]
// Every work item runs the same instructions in the same order whatever the batch holds, so a sequence gets the
// same bits alone or in a batch of 16 (the engine's batch invariance), and a speculative verify of k+1 tokens gives
// each token the bits a one-token decode would.
//
// The cache may be fp32, bf16, fp16 or q8_0 (int8 rows with per-32 fp16 scales, corral_kernels.h); keys and values
// are widened to fp32 as they are read, sums are in fp32.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "corral_kernels.h"

namespace corral {
namespace {

constexpr int kLanes = 16;  // partial sums per dot product: independent lanes the compiler vectorises

inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }
inline float widen(c10::Half x) { return static_cast<float>(x); }

// exp(x) for x <= 0 (scores minus their max), ~1e-7 relative error: 2^(x log2 e) split into an integer power
// (written into the exponent bits) and a degree-6 polynomial on [-0.5, 0.5] (Cephes' exp2f coefficients).
// Branch-free, so the loop that calls it vectorises.
inline float exp_nonpos(float x) {
  x = std::max(x, -87.0f);
  float t = x * 1.44269504088896341f;
  float n = std::floor(t + 0.5f);
  float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Element d of a cache row of D numbers, as fp32.
template <typename T>
inline float elem(const T* row, int64_t d, int64_t) { return widen(row[d]); }
inline float elem(const int8_t* row, int64_t d, int64_t D) { return row[d] * q8_scale(row, D, d / 32); }

// Cache row stride in elements of T: D, or D + D/16 bytes for q8_0 rows.
template <typename T>
constexpr int64_t row_stride(int64_t D) { return std::is_same_v<T, int8_t> ? D + D / 16 : D; }

template <typename T>
inline float dot(const float* q, const T* k, int64_t D) {
  float acc[kLanes] = {0};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += q[d + j] * elem(k, d + j, D);
  float s = 0.f;
  for (; d < D; ++d) s += q[d] * elem(k, d, D);
  for (int w = kLanes / 2; w > 0; w /= 2)  // fixed pairwise order
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0] + s;
}


#if defined(__AVX512F__)
// The same computation with AVX-512 intrinsics (GCC keeps 256-bit vectors on Zen 4 and spends the time in
// horizontal sums otherwise): 16 lanes of the head dimension per register, the scores' exp with vscalefps.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Numbers 16i..16i+15 of a cache row of D (q8_0 rows: int8 widened, times their block's scale).
template <typename T, int64_t D>
inline __m512 load_at(const T* row, int i) {
  if constexpr (std::is_same_v<T, int8_t>) {
    const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i * 16))));
    return _mm512_mul_ps(x, _mm512_set1_ps(q8_scale(row, D, i / 2)));
  } else {
    return load16(row + i * 16);
  }
}


// R (query heads per KV head) and NV (head_dim / 16) are template parameters so that the accumulators live in
// registers: with runtime counts they went through the stack, and each fma waited on a store-to-load forward.
template <typename T, int R, int NV>
void attend_item_avx512(const float* qrow, const T* K, const T* V, int64_t S, float* scores, float* dst,
                        int64_t dst_stride) {
  constexpr int64_t D = NV * 16, RS = row_stride<T>(D);
  __m512 qv[R * NV];
  for (int i = 0; i < R * NV; ++i) qv[i] = _mm512_loadu_ps(qrow + i * 16);
  constexpr int64_t row_bytes = RS * static_cast<int64_t>(sizeof(T));
  for (int64_t s = 0; s < S; ++s) {
    // Prefetch: the key row a few iterations ahead, and this value row for the second pass (each sequence's
    // keys start a fresh stretch of memory, which the hardware prefetcher ramps up on too slowly).
    const char* kn = reinterpret_cast<const char*>(K + std::min(s + 8, S - 1) * RS);
    const char* vn = reinterpret_cast<const char*>(V + s * RS);
    for (int64_t off = 0; off < row_bytes; off += 64) {
      _mm_prefetch(kn + off, _MM_HINT_T0);
      _mm_prefetch(vn + off, _MM_HINT_T1);
    }
    __m512 kv[NV];
    for (int i = 0; i < NV; ++i) kv[i] = load_at<T, D>(K + s * RS, i);
    for (int r = 0; r < R; ++r) {
      __m512 a = _mm512_mul_ps(qv[r * NV], kv[0]);
      for (int i = 1; i < NV; ++i) a = _mm512_fmadd_ps(qv[r * NV + i], kv[i], a);
      scores[r * S + s] = _mm512_reduce_add_ps(a);
    }
  }
  float denom[R];
  for (int r = 0; r < R; ++r) {
    float* sc = scores + r * S;
    float m = -INFINITY;
    for (int64_t s = 0; s < S; ++s) m = std::max(m, sc[s]);
    const __m512 mv = _mm512_set1_ps(m);
    __m512 z = _mm512_setzero_ps();
    int64_t s = 0;
    for (; s + 16 <= S; s += 16) {
      __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(sc + s), mv));
      _mm512_storeu_ps(sc + s, e);
      z = _mm512_add_ps(z, e);
    }
    if (s < S) {
      const __mmask16 k = static_cast<__mmask16>((1u << (S - s)) - 1);
      __m512 e = _mm512_maskz_mov_ps(k, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + s), mv)));
      _mm512_mask_storeu_ps(sc + s, k, e);
      z = _mm512_add_ps(z, e);
    }
    denom[r] = _mm512_reduce_add_ps(z);
  }
  __m512 acc[R * NV];
  for (int i = 0; i < R * NV; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t s = 0; s < S; ++s) {
    __m512 vv[NV];
    for (int i = 0; i < NV; ++i) vv[i] = load_at<T, D>(V + s * RS, i);
    for (int r = 0; r < R; ++r) {
      const __m512 p = _mm512_set1_ps(scores[r * S + s]);
      for (int i = 0; i < NV; ++i) acc[r * NV + i] = _mm512_fmadd_ps(p, vv[i], acc[r * NV + i]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 inv = _mm512_set1_ps(1.0f / denom[r]);
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(dst + r * dst_stride + i * 16, _mm512_mul_ps(acc[r * NV + i], inv));
  }
}

using ItemFn = void (*)(const float*, const void*, const void*, int64_t, float*, float*, int64_t);

template <typename T, int R, int NV>
void item_thunk(const float* q, const void* K, const void* V, int64_t S, float* sc, float* dst, int64_t ds) {
  attend_item_avx512<T, R, NV>(q, static_cast<const T*>(K), static_cast<const T*>(V), S, sc, dst, ds);
}

template <typename T, int NV>
ItemFn pick_r(int64_t R) {
  switch (R) {
    case 1: return &item_thunk<T, 1, NV>;
    case 2: return &item_thunk<T, 2, NV>;
    case 3: return &item_thunk<T, 3, NV>;
    case 4: return &item_thunk<T, 4, NV>;
    case 5: return &item_thunk<T, 5, NV>;
    case 6: return &item_thunk<T, 6, NV>;
    case 7: return &item_thunk<T, 7, NV>;
    case 8: return &item_thunk<T, 8, NV>;
    default: return nullptr;
  }
}

// The specialised kernel for (n_rep, head_dim), or null (the portable loop runs instead).
template <typename T>
ItemFn pick_item(int64_t R, int64_t D) {
  if (D == 64) return pick_r<T, 4>(R);
  if (D == 128) return pick_r<T, 8>(R);
  return nullptr;
}
#endif

template <typename T>
void attend(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& lengths,
            const at::Tensor& slots, double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3);
  const int64_t n_kv = kc.size(1), L = kc.size(2), R = H / n_kv;
  const float* qp = q.data_ptr<float>();
  const T* kp = kc.data_ptr<T>();
  const T* vp = vc.data_ptr<T>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  const int64_t* sp = slots.defined() ? slots.data_ptr<int64_t>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2);
  const int64_t cs0 = kc.stride(0), cs1 = kc.stride(1), RS = row_stride<T>(D);  // cache rows are contiguous
  const float fscale = static_cast<float>(scale);
#if defined(__AVX512F__)
  const ItemFn fast = pick_item<T>(R, D);
#else
  const void* fast = nullptr;
#endif

  at::parallel_for(0, B * n_kv * Tn, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(R * D), qrow(R * D), denom(R);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (n_kv * Tn), g = (item / Tn) % n_kv, t = item % Tn;
      const int64_t S = std::min<int64_t>(lp[b * Tn + t], L);
      const int64_t slot = sp ? sp[b] : b;
      const T* K = kp + slot * cs0 + g * cs1;
      const T* V = vp + slot * cs0 + g * cs1;
      for (int64_t r = 0; r < R; ++r) {
        const float* src = qp + b * qs0 + (g * R + r) * qs1 + t * qs2;
        for (int64_t d = 0; d < D; ++d) qrow[r * D + d] = src[d] * fscale;
      }
      scores.resize(R * S);
      if (fast) {
        fast(qrow.data(), K, V, S, scores.data(), op + ((b * H + g * R) * Tn + t) * D, Tn * D);
        continue;
      }
      for (int64_t s = 0; s < S; ++s)  // each key row is read once for all n_rep query heads
        for (int64_t r = 0; r < R; ++r) scores[r * S + s] = dot(&qrow[r * D], K + s * RS, D);
      for (int64_t r = 0; r < R; ++r) {
        float* sc = &scores[r * S];
        float m = -INFINITY;
        for (int64_t s = 0; s < S; ++s) m = std::max(m, sc[s]);
        for (int64_t s = 0; s < S; ++s) sc[s] = exp_nonpos(sc[s] - m);
        float z = 0.f;
        for (int64_t s = 0; s < S; ++s) z += sc[s];
        denom[r] = z;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t s = 0; s < S; ++s) {  // each value row is read once for all n_rep query heads
        const T* vrow = V + s * RS;
        for (int64_t r = 0; r < R; ++r) {
          const float p = scores[r * S + s];
          float* a = &acc[r * D];
          for (int64_t d = 0; d < D; ++d) a[d] += p * elem(vrow, d, D);
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        float* dst = op + ((b * H + g * R + r) * Tn + t) * D;
        const float inv = 1.0f / denom[r];
        for (int64_t d = 0; d < D; ++d) dst[d] = acc[r * D + d] * inv;
      }
    }
  });
}

}  // namespace

void q8_write_row(int8_t* dst, const float* src, int64_t D) {
  for (int64_t b = 0; b < D / 32; ++b) {
    const float* x = src + b * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const c10::Half dh(amax / 127.0f);
    const float d = static_cast<float>(dh), id = d > 0.f ? 1.0f / d : 0.f;
    for (int j = 0; j < 32; ++j)
      dst[b * 32 + j] = static_cast<int8_t>(std::clamp(std::nearbyint(x[j] * id), -127.0f, 127.0f));
    std::memcpy(dst + D + 2 * b, &dh.x, sizeof dh.x);
  }
}

void decode_attention_into(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& lengths, const at::Tensor& slots, double scale, at::Tensor& out) {
  switch (k_cache.scalar_type()) {
    case at::kFloat: attend<float>(q, k_cache, v_cache, lengths, slots, scale, out); break;
    case at::kBFloat16: attend<c10::BFloat16>(q, k_cache, v_cache, lengths, slots, scale, out); break;
    case at::kHalf: attend<c10::Half>(q, k_cache, v_cache, lengths, slots, scale, out); break;
    case at::kChar: attend<int8_t>(q, k_cache, v_cache, lengths, slots, scale, out); break;
    default: TORCH_CHECK(false, "decode_attention: cache dtype must be float32, bfloat16, float16 or int8 (q8_0)");
  }
}

namespace {

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& lengths, const std::optional<at::Tensor>& slots, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu(), "decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "decode_attention: q (B, H, T, D), caches (slots, n_kv, L, D)");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "decode_attention: q must be float32");
  const int64_t D = q.size(3);
  const bool q8 = k_cache.scalar_type() == at::kChar;
  TORCH_CHECK(k_cache.size(3) == (q8 ? q8_row_bytes(D) : D) && (!q8 || D % 32 == 0) &&
              q.size(1) % k_cache.size(1) == 0, "decode_attention: shapes (q8_0 rows: head_dim a multiple of 32)");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "decode_attention: caches must be contiguous");
  TORCH_CHECK(q.stride(3) == 1, "decode_attention: q's last dimension must be contiguous");
  TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.is_contiguous() &&
              lengths.numel() == q.size(0) * q.size(2), "decode_attention: lengths (B, T) int64");
  at::Tensor sl;
  if (slots.has_value() && slots->defined()) {
    sl = slots->contiguous();
    TORCH_CHECK(sl.scalar_type() == at::kLong && sl.numel() == q.size(0), "decode_attention: slots (B,) int64");
  } else {
    TORCH_CHECK(q.size(0) <= k_cache.size(0), "decode_attention: more rows than cache slots");
  }
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  decode_attention_into(q, k_cache, v_cache, lengths, sl, scale, out);
  return out;
}

}  // namespace
}  // namespace corral

TORCH_LIBRARY(corral, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor lengths, Tensor? slots, float scale)"
        " -> Tensor");
}

TORCH_LIBRARY_IMPL(corral, CPU, m) { m.impl("decode_attention", &corral::decode_attention); }
