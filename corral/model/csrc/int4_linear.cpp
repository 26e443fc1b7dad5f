// y = x @ W.T for a 4-bit weight (Q4_1 blocks of 32: w = code * d + m) on CPUs with AVX-512 VNNI.
//
// Why (measured on a 2-core Zen 4, a 16-row decode step of SmolLM2-135M): PyTorch's int4 CPU kernel widens the
// weights to bf16 and spends ~12 ms of a ~25 ms step at ~65% of bf16 peak. Here, as llama.cpp does, the activations
// are quantized to int8 per block of 32 (scale = max|x| / 127) and each block's dot product is one integer
// multiply-add instruction (vpdpbusd: 4 byte products summed per 32-bit lane), twice the bf16 rate:
//   sum_k w_k x_k = d * dx * sum_k code_k q_k + m * dx * sum_k q_k     per block, then summed over blocks in fp32.
//
// Layout (made once by corral/model/kernels.py from the loaded codes):
//   packed (N/16, K/32, 4, 64) uint8: for 16 output rows and one block, register g in 0..3 holds in its low nibbles
//     the codes of input channels 4g..4g+3 and in its high nibbles those of 16+4g..16+4g+3, byte 4n + i for row n.
//   scales (N/16, K/32, 2, 16) fp16: d and m of each row's block, as the GGUF stores them (20 bytes per 32 weights
//     read per token, as llama.cpp's Q4_1; fp32 scales were 24, and a single-stream step is bound by those reads).
// The same loop serves int8 weights (`int8_linear`, the batched LM head: it only ranks, the top logits are recomputed
// exactly; see LlamaForCausalLM.head).
// Each output row of each input row is computed by the same instructions in the same order whatever the number of
// input rows, so a sequence gets the same bits alone or in a batch (the engine's batch invariance).

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "corral_kernels.h"

namespace corral {

#ifdef CORRAL_VNNI

// x (M, K) fp32 → q (M, K) int8, and per block: dx (M, K/32) and dx * sum(q) (M, K/32).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* dx, float* dsum) {
  const int64_t nb = K / 32;
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t j = 0; j < nb; ++j) {
        const float* src = x + m * K + j * 32;
        __m512 a = _mm512_loadu_ps(src), b = _mm512_loadu_ps(src + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const float d = amax / 127.0f;
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(id)));  // round to nearest even
        __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(id)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + m * K + j * 32), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + m * K + j * 32 + 16), _mm512_cvtsepi32_epi8(qb));
        dx[m * nb + j] = d;
        dsum[m * nb + j] = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
      }
    }
  });
}

namespace {

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// RB input rows x one tile of 16 output rows, over all K/32 blocks.
//   4-bit: s = sum code * q (codes unsigned, activations signed), y += s * d * dx + m * dx * sum(q).
//   8-bit: vpdpbusd wants its first operand unsigned, so the activations go in offset by 128 (q ^ 0x80) and the
//          block's 128 * sum(w) is taken back out: y += (s - 128 * sum(w)) * d * dx.
template <int RB, bool kInt8>
void tile_rows(const uint8_t* wp, const void* scv, const int32_t* wsum, int64_t nb, const int8_t* q, const float* dx,
               const float* dsum, int64_t K, float* y, int64_t N) {
  const __m512i lo = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[RB];
  for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nb; ++j) {
    __m512i w[8];
    if constexpr (kInt8) {
      const uint8_t* blk = wp + j * 512;
      for (int g = 0; g < 8; ++g) w[g] = _mm512_loadu_si512(blk + g * 64);
    } else {
      const uint8_t* blk = wp + j * 256;
      for (int g = 0; g < 4; ++g) {
        const __m512i v = _mm512_loadu_si512(blk + g * 64);
        w[g] = _mm512_and_si512(v, lo);
        w[g + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo);
      }
    }
    if constexpr (kInt8) {
      const __m512 d = _mm512_loadu_ps(static_cast<const float*>(scv) + j * 16);
      const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(wsum + j * 16), 7);  // 128 * sum(w)
      for (int r = 0; r < RB; ++r) {
        const int8_t* qr = q + r * K + j * 32;
        __m512i s = _mm512_setzero_si512();
        for (int g = 0; g < 8; ++g) s = _mm512_dpbusd_epi32(s, _mm512_xor_si512(bcast4(qr + 4 * g), flip), w[g]);
        const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(dx[r * nb + j]));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s, corr)), dd, acc[r]);
      }
    } else {
      const uint16_t* sc = static_cast<const uint16_t*>(scv) + j * 32;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
      const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 16)));
      for (int r = 0; r < RB; ++r) {
        const int8_t* qr = q + r * K + j * 32;
        __m512i s = _mm512_setzero_si512();
        for (int g = 0; g < 8; ++g) s = _mm512_dpbusd_epi32(s, w[g], bcast4(qr + 4 * g));
        const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(dx[r * nb + j]));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), dd, acc[r]);
        acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(dsum[r * nb + j]), acc[r]);
      }
    }
  }
  for (int r = 0; r < RB; ++r) _mm512_storeu_ps(y + r * N, acc[r]);
}

using TileFn = void (*)(const uint8_t*, const void*, const int32_t*, int64_t, const int8_t*, const float*,
                        const float*, int64_t, float*, int64_t);
constexpr int kRows = 8;  // input rows per pass over a weight tile (8 accumulators + 8 weight registers + scales)
template <bool kInt8>
constexpr TileFn kTile[kRows + 1] = {nullptr, &tile_rows<1, kInt8>, &tile_rows<2, kInt8>, &tile_rows<3, kInt8>,
                                     &tile_rows<4, kInt8>, &tile_rows<5, kInt8>, &tile_rows<6, kInt8>,
                                     &tile_rows<7, kInt8>, &tile_rows<8, kInt8>};

}  // namespace

// q (M, K) int8 activations (from quantize_rows) → y (M, N) = x @ W.T, W in either layout; threads split the output
// rows (weight tiles), and each tile stays in L1/L2 while the input rows pass over it.
template <bool kInt8>
void quantized_matmul(const int8_t* qp, const float* dxp, const float* dsp, int64_t M, int64_t nb, const void* packed,
                      const void* scales, const int32_t* wsum, int64_t N, float* yp) {
  const int64_t K = nb * 32;
  // scale bytes per tile: fp32 d (int8) or fp16 d and m (int4), 16 rows a block
  const int64_t tile_bytes = nb * (kInt8 ? 512 : 256), tile_scale_bytes = nb * 64;
  const uint8_t* wp = static_cast<const uint8_t*>(packed);
  const uint8_t* sp = static_cast<const uint8_t*>(scales);
  at::parallel_for(0, N / 16, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t r = 0; r < M; r += kRows) {
        const int rb = static_cast<int>(std::min<int64_t>(kRows, M - r));
        kTile<kInt8>[rb](wp + t * tile_bytes, sp + t * tile_scale_bytes, wsum ? wsum + t * nb * 16 : nullptr, nb,
                         qp + r * K, dxp + r * nb, dsp + r * nb, K, yp + r * N + t * 16, N);
      }
    }
  });
}

void int4_matmul(const int8_t* q, const float* dx, const float* dsum, int64_t M, int64_t K, const uint8_t* packed,
                 const c10::Half* scales, int64_t N, float* y) {
  quantized_matmul<false>(q, dx, dsum, M, K / 32, packed, scales, nullptr, N, y);
}

namespace {

template <bool kInt8>
at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                            const int32_t* wsum) {
  const int64_t nb = packed.size(1), K = nb * 32, N = packed.size(0) * 16;
  TORCH_CHECK(x.size(-1) == K, "quantized linear: x has ", x.size(-1), " input features, the weight ", K);
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y.view(shape);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor dx = at::empty({M, nb}, x.options()), dsum = at::empty({M, nb}, x.options());
  quantize_rows(x2.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), dx.data_ptr<float>(), dsum.data_ptr<float>());
  quantized_matmul<kInt8>(q.data_ptr<int8_t>(), dx.data_ptr<float>(), dsum.data_ptr<float>(), M, nb, packed.data_ptr(),
                          scales.data_ptr(), wsum, N, y.data_ptr<float>());
  return y.view(shape);
}
}  // namespace
#endif

namespace {

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales) {
#ifdef CORRAL_VNNI
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "int4_linear: x must be a float32 CPU tensor");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 4 && packed.size(2) == 4 && packed.size(3) == 64 &&
              packed.is_contiguous(), "int4_linear: packed must be (N/16, K/32, 4, 64) uint8");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.dim() == 4 &&
              scales.size(0) == packed.size(0) && scales.size(1) == packed.size(1) && scales.size(2) == 2,
              "int4_linear: scales must be (N/16, K/32, 2, 16) float16");
  return quantized_linear<false>(x, packed, scales, nullptr);
#else
  TORCH_CHECK(false, "int4_linear: this build has no AVX-512 VNNI");
#endif
}

// Q8_0-style weights (int8 codes, one fp32 scale per row and block of 32): packed (N/16, K/32, 8, 64) int8, byte
// 4n + i of register g = channel 4g + i of row n; scales (N/16, K/32, 16); wsum (N/16, K/32, 16) int32 = sum of
// each row's 32 codes in the block.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& wsum) {
#ifdef CORRAL_VNNI
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "int8_linear: x must be a float32 CPU tensor");
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 4 && packed.size(2) == 8 && packed.size(3) == 64 &&
              packed.is_contiguous(), "int8_linear: packed must be (N/16, K/32, 8, 64) int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 3 &&
              scales.size(0) == packed.size(0) && scales.size(1) == packed.size(1), "int8_linear: scales shape");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.is_contiguous() && wsum.sizes() == scales.sizes(),
              "int8_linear: wsum must be int32 shaped like scales");
  return quantized_linear<true>(x, packed, scales, wsum.data_ptr<int32_t>());
#else
  TORCH_CHECK(false, "int8_linear: this build has no AVX-512 VNNI");
#endif
}

bool int4_linear_supported() {
#ifdef CORRAL_VNNI
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace corral

TORCH_LIBRARY_FRAGMENT(corral, m) {
  m.def("int4_linear(Tensor x, Tensor packed, Tensor scales) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scales, Tensor wsum) -> Tensor");
  m.def("int4_linear_supported() -> bool", &corral::int4_linear_supported);
}

TORCH_LIBRARY_IMPL(corral, CPU, m) {
  m.impl("int4_linear", &corral::int4_linear);
  m.impl("int8_linear", &corral::int8_linear);
}
