// What corral's CPU kernels share across their files (one library, built by corral/model/kernels.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define CORRAL_VNNI 1
#endif

namespace corral {

#if defined(__AVX512F__)
// exp(x) for x <= 0 (scores minus their max, -|x|), ~1e-7 relative error: 2^(x log2 e) split into an integer power
// (vscalefps) and a degree-6 polynomial on [-0.5, 0.5] (Cephes' exp2f coefficients).
inline __m512 exp_nonpos16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// The KV cache's q8_0 rows (`--kv-dtype q8_0`, an int8 cache): a key or value row of D numbers is D int8 values,
// then D/32 fp16 scales, D + D/16 bytes (GGUF's Q8_0 blocks, scales moved to the row's end): x = q * d per block
// of 32, d = max|x| / 127 rounded to fp16.
inline int64_t q8_row_bytes(int64_t D) { return D + D / 16; }
inline float q8_scale(const int8_t* row, int64_t D, int64_t block) {
  uint16_t bits;
  std::memcpy(&bits, row + D + 2 * block, sizeof bits);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}
// decode_attention.cpp: one row quantized as above (llama.py's `kv_pack` gives the same bytes).
void q8_write_row(int8_t* dst, const float* src, int64_t D);

// decode_attention.cpp: q (B, H, T, D) fp32 (last dim contiguous) against caches (slots, n_kv, L, D) → out
// (B, H, T, D) contiguous fp32 (caches of int8 hold q8_0 rows, D + D/16 wide); lengths (B, T) int64; slots (B,) int64 or undefined (rows 0..B-1).
void decode_attention_into(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& lengths, const at::Tensor& slots, double scale, at::Tensor& out);

#ifdef CORRAL_VNNI
// int4_linear.cpp: x (M, K) fp32 → int8 q (M, K) and per block of 32: dx, dx * sum(q) (M, K/32).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* dx, float* dsum);
// y (M, N) = x @ W.T for x already quantized by quantize_rows; W in int4_linear's packed layout (fp16 scales).
void int4_matmul(const int8_t* q, const float* dx, const float* dsum, int64_t M, int64_t K, const uint8_t* packed,
                 const c10::Half* scales, int64_t N, float* y);
#endif

}  // namespace corral
