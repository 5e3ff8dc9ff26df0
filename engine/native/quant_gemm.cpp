// Quantized-weight GEMM for the rakis engine (y = x @ W.T + b), called through ctypes.
//
// Weights stay in GGML's block formats, 32 weights per block along the input dim:
//   Q4_1: {fp16 d, fp16 m, uint8 qs[16]}  w[j] = d * nibble(j) + m
//         (nibble j < 16 is qs[j] & 15, nibble j >= 16 is qs[j - 16] >> 4)
//   Q8_0: {fp16 d, int8 qs[32]}           w[j] = d * qs[j]
// Q4_0 is loaded as Q4_1 with m = -8 d, so one 4-bit kernel serves both.
// Activations are quantized per row into int8 blocks of 32 with an fp32 scale (as
// llama.cpp's Q8_1), so each block's dot product is an exact int32 sum; the fp32
// work is one multiply-add per block. Decode is memory bound: this streams 0.6 (Q4_1)
// or 1.06 (Q8_0) bytes per weight instead of fp32's 4.
//
// Interleaved layouts (wtypes 2 = Q4_1x8, 3 = Q8_0x8; engine.quant.interleave8 makes
// them at load when N % 8 == 0, and keeps only them): the blocks b of eight weight
// rows side by side, groups of eight rows stored one after another, each group's
// blocks in order:
//   Q4_1x8: {fp16 d[8], fp16 m[8], uint8 qs[4][32]}  (160 B = 8 x 20)
//   Q8_0x8: {fp16 d[8], int8 qs[8][32]}             (272 B = 8 x 34)
// where chunk qs[c] holds qs[row][4c .. 4c+3] of rows 0..7 (Q4_1: & 15 gives weights
// 4c..4c+3, >> 4 weights 16+4c..16+4c+3). Why: at 4+ activation rows the GEMM is
// compute bound, and then one 32-byte integer dot product against a broadcast 4-byte
// activation group yields eight rows' partial sums, and the per-block float work
// (convert, scale, fma) is paid once per eight rows (as llama.cpp's repacked
// ggml_gemm_q4_0_8x8_q8_0). The plain layouts remain for N % 8 != 0.
//
// Built WITHOUT -march=native: every SIMD path is a function compiled for its own ISA
// (target attributes) and chosen at run time from the CPU's flags, so one build runs
// on any x86-64 (scalar path on other architectures). Plain C ABI, no torch headers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <omp.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RAKIS_X86 1
#endif

namespace {

struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) { bits = sign; }
    else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One activation row, quantized: qs[K] int8, d[nb] scales, s[nb] = d * sum(qs of block).
struct QRow { const int8_t* qs; const float* d; const float* s; };

void quantize_row(const float* x, int K, int8_t* qs, float* d, float* s) {
  const int nb = K / 32;
  for (int b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float db = amax / 127.f, inv = db > 0.f ? 1.f / db : 0.f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = (int)std::nearbyint(xb[j] * inv);
      qs[b * 32 + j] = (int8_t)q;
      sum += q;
    }
    d[b] = db;
    s[b] = db * (float)sum;
  }
}

// ---------------------------------------------------------------- scalar (any CPU)
float dot_q4_1_scalar(const BlockQ4_1* w, QRow x, int nb) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b) {
    const int8_t* xq = x.qs + b * 32;
    int isum = 0;
    for (int j = 0; j < 16; ++j) isum += (w[b].qs[j] & 15) * xq[j] + (w[b].qs[j] >> 4) * xq[j + 16];
    acc += half_to_float(w[b].d) * x.d[b] * (float)isum + half_to_float(w[b].m) * x.s[b];
  }
  return acc;
}

float dot_q8_0_scalar(const BlockQ8_0* w, QRow x, int nb) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b) {
    const int8_t* xq = x.qs + b * 32;
    int isum = 0;
    for (int j = 0; j < 32; ++j) isum += w[b].qs[j] * xq[j];
    acc += half_to_float(w[b].d) * x.d[b] * (float)isum;
  }
  return acc;
}

// ---------------------------------------------------------------- 8-row interleaved layouts
// Q4_1x8 / Q8_0x8 (wtypes 2, 3; QuantLinear packs them at load when N % 8 == 0): eight
// weight rows' block b side by side, so one 32-byte load holds four weights of each of
// eight rows and one dpbusd against a broadcast 4-byte activation group gives eight
// rows' partial sums (as llama.cpp's ggml_gemm_q4_0_8x8_q8_0). The scale work (cvt,
// multiply, fma) is then paid once per eight rows, not once per row.
struct BlockQ4_1x8 { uint16_t d[8], m[8]; uint8_t qs[4][32]; };  // qs[c] = rows 0..7 x qs[row][4c..4c+3]
struct BlockQ8_0x8 { uint16_t d[8]; int8_t qs[8][32]; };         // qs[c] = rows 0..7 x qs[row][4c..4c+3]
static_assert(sizeof(BlockQ4_1x8) == 160, "Q4_1x8 block is 160 bytes");
static_assert(sizeof(BlockQ8_0x8) == 272, "Q8_0x8 block is 272 bytes");

// Eight weight rows (one group: nb interleaved blocks) x mt activation rows:
// out[r * 8 + i] = weight row i . activation row r.
void group_q4_1x8_scalar(const BlockQ4_1x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  for (int r = 0; r < mt; ++r)
    for (int i = 0; i < 8; ++i) {
      float acc = 0.f;
      for (int b = 0; b < nb; ++b) {
        const int8_t* xq = x[r].qs + b * 32;
        int isum = 0;
        for (int c = 0; c < 4; ++c)
          for (int j = 0; j < 4; ++j) {
            const uint8_t q = w[b].qs[c][i * 4 + j];
            isum += (q & 15) * xq[4 * c + j] + (q >> 4) * xq[16 + 4 * c + j];
          }
        acc += half_to_float(w[b].d[i]) * x[r].d[b] * (float)isum + half_to_float(w[b].m[i]) * x[r].s[b];
      }
      out[r * 8 + i] = acc;
    }
}
void group_q8_0x8_scalar(const BlockQ8_0x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  for (int r = 0; r < mt; ++r)
    for (int i = 0; i < 8; ++i) {
      float acc = 0.f;
      for (int b = 0; b < nb; ++b) {
        const int8_t* xq = x[r].qs + b * 32;
        int isum = 0;
        for (int c = 0; c < 8; ++c)
          for (int j = 0; j < 4; ++j) isum += w[b].qs[c][i * 4 + j] * xq[4 * c + j];
        acc += half_to_float(w[b].d[i]) * x[r].d[b] * (float)isum;
      }
      out[r * 8 + i] = acc;
    }
}

#ifdef RAKIS_X86
// ---------------------------------------------------------------- AVX2 (+FMA, F16C)
#define AVX2_FNS __attribute__((target("avx2,fma,f16c")))
AVX2_FNS inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
AVX2_FNS inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128((const __m128i*)qs);
  const __m128i lo = _mm_and_si128(q, _mm_set1_epi8(15));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(15));
  return _mm256_set_m128i(hi, lo);
}
AVX2_FNS inline __m256i dot_u8s8_avx2(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
AVX2_FNS float dot_q4_1_avx2(const BlockQ4_1* w, QRow x, int nb) {
  __m256 acc = _mm256_setzero_ps();
  float macc = 0.f;
  for (int b = 0; b < nb; ++b) {
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));
    const __m256i p = dot_u8s8_avx2(unpack_nibbles(w[b].qs), xv);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(w[b].d) * x.d[b]), acc);
    macc += _cvtsh_ss(w[b].m) * x.s[b];
  }
  return hsum8(acc) + macc;
}
AVX2_FNS float dot_q8_0_avx2(const BlockQ8_0* w, QRow x, int nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const __m256i wv = _mm256_loadu_si256((const __m256i*)w[b].qs);
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));
    // u8 x s8 products: |w| times x carrying w's sign
    const __m256i p = dot_u8s8_avx2(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(w[b].d) * x.d[b]), acc);
  }
  return hsum8(acc);
}


// Four activation rows per pass over a weight row: the nibbles are unpacked and the
// scales converted once, then reused (batches of 4-32 decode rows, prefill chunks).
#define RAKIS_DOT4_Q4(NAME, ATTR, DOT)                                                       \
  ATTR void NAME(const BlockQ4_1* w, const QRow* x, int nb, float* out) {                  \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                            \
    float m0 = 0.f, m1 = 0.f, m2 = 0.f, m3 = 0.f;                                          \
    for (int b = 0; b < nb; ++b) {                                                         \
      const __m256i wv = unpack_nibbles(w[b].qs);                                          \
      const float dw = _cvtsh_ss(w[b].d), mw = _cvtsh_ss(w[b].m);                          \
      _Pragma("GCC unroll 4")                                                              \
      for (int r = 0; r < 4; ++r) {                                                        \
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(x[r].qs + b * 32));          \
        const __m256 p = _mm256_cvtepi32_ps(DOT(wv, xv));                                  \
        const __m256 sc = _mm256_set1_ps(dw * x[r].d[b]);                                  \
        const float mm = mw * x[r].s[b];                                                   \
        if (r == 0) { a0 = _mm256_fmadd_ps(p, sc, a0); m0 += mm; }                         \
        else if (r == 1) { a1 = _mm256_fmadd_ps(p, sc, a1); m1 += mm; }                    \
        else if (r == 2) { a2 = _mm256_fmadd_ps(p, sc, a2); m2 += mm; }                    \
        else { a3 = _mm256_fmadd_ps(p, sc, a3); m3 += mm; }                                \
      }                                                                                    \
    }                                                                                      \
    out[0] = hsum8(a0) + m0; out[1] = hsum8(a1) + m1;                                      \
    out[2] = hsum8(a2) + m2; out[3] = hsum8(a3) + m3;                                      \
  }
#define RAKIS_DOT4_Q8(NAME, ATTR, DOT)                                                       \
  ATTR void NAME(const BlockQ8_0* w, const QRow* x, int nb, float* out) {                  \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                            \
    for (int b = 0; b < nb; ++b) {                                                         \
      const __m256i wv = _mm256_loadu_si256((const __m256i*)w[b].qs);                      \
      const __m256i wa = _mm256_sign_epi8(wv, wv);                                         \
      const float dw = _cvtsh_ss(w[b].d);                                                  \
      _Pragma("GCC unroll 4")                                                              \
      for (int r = 0; r < 4; ++r) {                                                        \
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(x[r].qs + b * 32));          \
        const __m256 p = _mm256_cvtepi32_ps(DOT(wa, _mm256_sign_epi8(xv, wv)));            \
        const __m256 sc = _mm256_set1_ps(dw * x[r].d[b]);                                  \
        if (r == 0) a0 = _mm256_fmadd_ps(p, sc, a0);                                       \
        else if (r == 1) a1 = _mm256_fmadd_ps(p, sc, a1);                                  \
        else if (r == 2) a2 = _mm256_fmadd_ps(p, sc, a2);                                  \
        else a3 = _mm256_fmadd_ps(p, sc, a3);                                              \
      }                                                                                    \
    }                                                                                      \
    out[0] = hsum8(a0); out[1] = hsum8(a1); out[2] = hsum8(a2); out[3] = hsum8(a3);        \
  }
// Streaming four rows at once defeats the hardware prefetcher (measured: a cold Q8_0
// head ran 2.6x slower than row by row), so each pass prefetches the group of rows it
// will read two groups later, spread evenly over the pass: those four rows are one
// contiguous run of 4 * ldw blocks, and block b of the pass asks for its b-th share.
#define RAKIS_PREFETCH_AHEAD(w, b, ldw, bytes)                                               \
  {                                                                                        \
    const char* pf = (const char*)(w + 8 * ldw) + (int64_t)(b) * 4 * (bytes);              \
    for (int o = 0; o < 4 * (int)(bytes); o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);      \
  }

// One activation row against four weight rows (batch-1 decode): the activation block
// is loaded and its scale read once for four rows, and the four rows' sums are four
// independent dependency chains instead of one.
#define RAKIS_ROWS4_Q4(NAME, ATTR, DOT)                                                      \
  ATTR void NAME(const BlockQ4_1* w, int64_t ldw, QRow x, int nb, float* out) {            \
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),          \
                   _mm256_setzero_ps()};                                                   \
    __m128 mv = _mm_setzero_ps();                                                          \
    for (int b = 0; b < nb; ++b) {                                                         \
      const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));              \
      const __m128 xd = _mm_set1_ps(x.d[b]);                                               \
      const BlockQ4_1 *w0 = w + b, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;         \
      RAKIS_PREFETCH_AHEAD(w, b, ldw, sizeof(BlockQ4_1));                                     \
      const __m128i dm = _mm_setr_epi16(w0->d, w1->d, w2->d, w3->d, w0->m, w1->m, w2->m, w3->m); \
      const __m256 dmf = _mm256_cvtph_ps(dm);                                              \
      const __m128 dx = _mm_mul_ps(_mm256_castps256_ps128(dmf), xd);                       \
      mv = _mm_fmadd_ps(_mm256_extractf128_ps(dmf, 1), _mm_set1_ps(x.s[b]), mv);           \
      alignas(16) float dxs[4];                                                            \
      _mm_store_ps(dxs, dx);                                                               \
      _Pragma("GCC unroll 4")                                                              \
      for (int r = 0; r < 4; ++r) {                                                        \
        const __m256i p = DOT(unpack_nibbles((w0 + r * ldw)->qs), xv);                     \
        a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dxs[r]), a[r]);        \
      }                                                                                    \
    }                                                                                      \
    alignas(16) float m[4];                                                                \
    _mm_store_ps(m, mv);                                                                   \
    for (int r = 0; r < 4; ++r) out[r] = hsum8(a[r]) + m[r];                               \
  }
#define RAKIS_ROWS4_Q8(NAME, ATTR, DOT)                                                      \
  ATTR void NAME(const BlockQ8_0* w, int64_t ldw, QRow x, int nb, float* out) {            \
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),          \
                   _mm256_setzero_ps()};                                                   \
    for (int b = 0; b < nb; ++b) {                                                         \
      const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));              \
      const BlockQ8_0 *w0 = w + b, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;         \
      RAKIS_PREFETCH_AHEAD(w, b, ldw, sizeof(BlockQ8_0));                                     \
      const __m128i dd = _mm_setr_epi16(w0->d, w1->d, w2->d, w3->d, 0, 0, 0, 0);           \
      alignas(16) float dxs[4];                                                            \
      _mm_store_ps(dxs, _mm_mul_ps(_mm_cvtph_ps(dd), _mm_set1_ps(x.d[b])));                \
      _Pragma("GCC unroll 4")                                                              \
      for (int r = 0; r < 4; ++r) {                                                        \
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(w0 + r * ldw)->qs);         \
        const __m256i p = DOT(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));         \
        a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dxs[r]), a[r]);        \
      }                                                                                    \
    }                                                                                      \
    for (int r = 0; r < 4; ++r) out[r] = hsum8(a[r]);                                      \
  }
#define RAKIS_AVX2_DOT(u, s) dot_u8s8_avx2(u, s)
RAKIS_ROWS4_Q4(rows4_q4_1_avx2, AVX2_FNS, RAKIS_AVX2_DOT)
RAKIS_ROWS4_Q8(rows4_q8_0_avx2, AVX2_FNS, RAKIS_AVX2_DOT)
RAKIS_DOT4_Q4(dot4_q4_1_avx2, AVX2_FNS, RAKIS_AVX2_DOT)
RAKIS_DOT4_Q8(dot4_q8_0_avx2, AVX2_FNS, RAKIS_AVX2_DOT)

// quantize_row with AVX2, bit for bit the same: |x| max, then x * inv rounded to
// nearest even (cvtps_epi32 under the default rounding mode, as nearbyint). Why: the
// scalar loop costs about as much as a 576-row GEMM's integer work at M >= 16.
AVX2_FNS void quantize_row_avx2(const float* x, int K, int8_t* qs, float* d, float* s) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo packs' lane interleave
  for (int b = 0; b < K / 32; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                             _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float db = amax / 127.f, inv = db > 0.f ? 1.f / db : 0.f;
    const __m256 vi = _mm256_set1_ps(inv);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vi));
    const __m256i sum4 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)(qs + b * 32), _mm256_permutevar8x32_epi32(p, order));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sum4), _mm256_extracti128_si256(sum4, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    d[b] = db;
    s[b] = db * (float)_mm_cvtsi128_si32(t);
  }
}

// Memory-bound passes (few activation rows, weights streaming from memory) want the
// weights of a later pass requested ahead: block b of a pass asks for the b-th share
// of the pass it is given (pf, two passes on; null: none), so the requests spread
// evenly over the pass. Measured on 30 distinct 3072x576 Q4_1 weights at M = 1.
#define RAKIS_PREFETCH_PASS(pf, b, bytes)                                                     \
  if (pf) {                                                                                \
    const char* p_ = (pf) + (int64_t)(b) * (bytes);                                        \
    for (int o_ = 0; o_ < (int)(bytes); o_ += 64) _mm_prefetch(p_ + o_, _MM_HINT_T0);     \
  }

// Four activation bytes (one 4-byte group) in every 32-bit lane: against an
// interleaved chunk, lane i then pairs them with the same four weights of row i.
AVX2_FNS inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Eight interleaved weight rows x MT activation rows (MT <= 2: AVX2 has 16 vector
// registers). maddubs' int16 lanes are summed over all eight chunks before one madd:
// each lane is at most 8 * 2 * 15 * 127 = 30480, inside int16.
template <int MT>
AVX2_FNS void g8_q4_1_avx2(const BlockQ4_1x8* w, const QRow* x, int nb, float* out, const char* pf) {
  __m256 acc[MT], macc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = macc[r] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, sizeof(BlockQ4_1x8));
    __m256i lo[4], hi[4];
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)w[b].qs[c]);
      lo[c] = _mm256_and_si256(q, low);
      hi[c] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].d));
    const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].m));
    for (int r = 0; r < MT; ++r) {
      const int8_t* xq = x[r].qs + b * 32;
      __m256i s16 = _mm256_maddubs_epi16(lo[0], bcast4(xq));
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[0], bcast4(xq + 16)));
      for (int c = 1; c < 4; ++c) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[c], bcast4(xq + 4 * c)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[c], bcast4(xq + 16 + 4 * c)));
      }
      const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
      acc[r] = _mm256_fmadd_ps(p, _mm256_mul_ps(d, _mm256_set1_ps(x[r].d[b])), acc[r]);
      macc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[r].s[b]), macc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm256_storeu_ps(out + r * 8, _mm256_add_ps(acc[r], macc[r]));
}
// Q8_0 weights are signed: |w| x (x with w's sign) as u8 x s8; those int16 pair sums
// reach 2 * 127 * 127, so each chunk is widened to int32 on its own.
template <int MT>
AVX2_FNS void g8_q8_0_avx2(const BlockQ8_0x8* w, const QRow* x, int nb, float* out, const char* pf) {
  __m256 acc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, sizeof(BlockQ8_0x8));
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].d));
    for (int r = 0; r < MT; ++r) {
      const int8_t* xq = x[r].qs + b * 32;
      __m256i s = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        const __m256i wq = _mm256_loadu_si256((const __m256i*)w[b].qs[c]);
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(bcast4(xq + 4 * c), wq));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
      }
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(x[r].d[b])), acc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm256_storeu_ps(out + r * 8, acc[r]);
}
void group_q4_1x8_avx2(const BlockQ4_1x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  mt == 1 ? g8_q4_1_avx2<1>(w, x, nb, out, pf) : g8_q4_1_avx2<2>(w, x, nb, out, pf);
}
void group_q8_0x8_avx2(const BlockQ8_0x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  mt == 1 ? g8_q8_0_avx2<1>(w, x, nb, out, pf) : g8_q8_0_avx2<2>(w, x, nb, out, pf);
}

// ---------------------------------------------------------------- AVX-512 VNNI (256-bit ops)
#define VNNI_FNS __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define AVX512_FNS VNNI_FNS  // the same ISA, for the functions that use 512-bit registers
VNNI_FNS float dot_q4_1_vnni(const BlockQ4_1* w, QRow x, int nb) {
  __m256 acc = _mm256_setzero_ps();
  float macc = 0.f;
  for (int b = 0; b < nb; ++b) {
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), unpack_nibbles(w[b].qs), xv);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(w[b].d) * x.d[b]), acc);
    macc += _cvtsh_ss(w[b].m) * x.s[b];
  }
  return hsum8(acc) + macc;
}
VNNI_FNS float dot_q8_0_vnni(const BlockQ8_0* w, QRow x, int nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const __m256i wv = _mm256_loadu_si256((const __m256i*)w[b].qs);
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(x.qs + b * 32));
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(w[b].d) * x.d[b]), acc);
  }
  return hsum8(acc);
}
#define RAKIS_VNNI_DOT(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
RAKIS_DOT4_Q4(dot4_q4_1_vnni, VNNI_FNS, RAKIS_VNNI_DOT)
RAKIS_DOT4_Q8(dot4_q8_0_vnni, VNNI_FNS, RAKIS_VNNI_DOT)
RAKIS_ROWS4_Q4(rows4_q4_1_vnni, VNNI_FNS, RAKIS_VNNI_DOT)
RAKIS_ROWS4_Q8(rows4_q8_0_vnni, VNNI_FNS, RAKIS_VNNI_DOT)

// Four weight rows x four activation rows per pass (prefill chunks, decode batches of
// 4+): each unpacked weight block and each activation block is loaded once for four
// products, and each product's scale is one vector multiply of two broadcasts. At 16-32
// rows the kernel is compute bound, and this is ~6 vector ops per 32-MAC block product
// against ~9 for four activation rows over one weight row. It needs AVX-512VL's 32
// vector registers (16 accumulators), so it exists on the VNNI path only.
// out[m * 4 + r] = row r of w (rows ldw blocks apart) . activation row m.
#define RAKIS_TILE4X4(NAME, BLOCK, WEIGHTS, HAS_MIN)                                          \
  VNNI_FNS void NAME(const BLOCK* w, int64_t ldw, const QRow* x, int nb, float* out) {      \
    __m256 acc[4][4];                                                                      \
    for (int m = 0; m < 4; ++m)                                                            \
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm256_setzero_ps();                         \
    __m128 macc[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()}; \
    for (int b = 0; b < nb; ++b) {                                                         \
      const BLOCK *w0 = w + b, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;             \
      RAKIS_PREFETCH_AHEAD(w, b, ldw, sizeof(BLOCK));                                      \
      alignas(16) float dw[4];                                                             \
      _mm_store_ps(dw, _mm_cvtph_ps(_mm_setr_epi16(w0->d, w1->d, w2->d, w3->d, 0, 0, 0, 0))); \
      __m256i wv[4];                                                                       \
      const BLOCK* wr[4] = {w0, w1, w2, w3};                                               \
      _Pragma("GCC unroll 4")                                                              \
      for (int r = 0; r < 4; ++r) wv[r] = WEIGHTS(wr[r]);                                  \
      if (HAS_MIN) {                                                                       \
        const __m128 mw = _mm_cvtph_ps(_mm_setr_epi16(((const BlockQ4_1*)w0)->m,            \
            ((const BlockQ4_1*)w1)->m, ((const BlockQ4_1*)w2)->m, ((const BlockQ4_1*)w3)->m, \
            0, 0, 0, 0));                                                                  \
        _Pragma("GCC unroll 4")                                                            \
        for (int m = 0; m < 4; ++m) macc[m] = _mm_fmadd_ps(mw, _mm_set1_ps(x[m].s[b]), macc[m]); \
      }                                                                                    \
      _Pragma("GCC unroll 4")                                                              \
      for (int m = 0; m < 4; ++m) {                                                        \
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(x[m].qs + b * 32));          \
        const __m256 dx = _mm256_set1_ps(x[m].d[b]);                                       \
        _Pragma("GCC unroll 4")                                                            \
        for (int r = 0; r < 4; ++r) {                                                      \
          const __m256i p = HAS_MIN                                                        \
              ? _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[r], xv)                     \
              : _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(wv[r]),         \
                                    _mm256_sign_epi8(xv, wv[r]));                          \
          acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),                               \
                                      _mm256_mul_ps(dx, _mm256_set1_ps(dw[r])), acc[m][r]); \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
    for (int m = 0; m < 4; ++m) {                                                          \
      alignas(16) float mm[4];                                                             \
      _mm_store_ps(mm, macc[m]);                                                           \
      for (int r = 0; r < 4; ++r) out[m * 4 + r] = hsum8(acc[m][r]) + mm[r];               \
    }                                                                                      \
  }
#define RAKIS_Q4_WEIGHTS(blk) unpack_nibbles((blk)->qs)
#define RAKIS_Q8_WEIGHTS(blk) _mm256_loadu_si256((const __m256i*)(blk)->qs)
RAKIS_TILE4X4(tile4x4_q4_1_vnni, BlockQ4_1, RAKIS_Q4_WEIGHTS, true)
RAKIS_TILE4X4(tile4x4_q8_0_vnni, BlockQ8_0, RAKIS_Q8_WEIGHTS, false)

// Eight interleaved weight rows x MT <= 4 activation rows with dpbusd: per block and
// activation row, eight dpbusd (one per 4-weight group of all eight rows) and one
// scale fma serve eight weight rows; the weights are loaded and unpacked once per MT
// rows. ~2.5 vector ops per 32-weight block product against ~6.5 in the 4x4 tile.
template <int MT>
VNNI_FNS void g8_q4_1_vnni(const BlockQ4_1x8* w, const QRow* x, int nb, float* out, const char* pf) {
  __m256 acc[MT], macc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = macc[r] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(15);
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, sizeof(BlockQ4_1x8));
    __m256i lo[4], hi[4];
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)w[b].qs[c]);
      lo[c] = _mm256_and_si256(q, low);
      hi[c] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].d));
    const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].m));
    for (int r = 0; r < MT; ++r) {
      const int8_t* xq = x[r].qs + b * 32;
      // two chains (low and high nibbles) halve the dpbusd latency a row waits on
      __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo[0], bcast4(xq));
      __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), hi[0], bcast4(xq + 16));
      for (int c = 1; c < 4; ++c) {
        s0 = _mm256_dpbusd_epi32(s0, lo[c], bcast4(xq + 4 * c));
        s1 = _mm256_dpbusd_epi32(s1, hi[c], bcast4(xq + 16 + 4 * c));
      }
      const __m256 p = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
      acc[r] = _mm256_fmadd_ps(p, _mm256_mul_ps(d, _mm256_set1_ps(x[r].d[b])), acc[r]);
      macc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[r].s[b]), macc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm256_storeu_ps(out + r * 8, _mm256_add_ps(acc[r], macc[r]));
}
// Signed Q8_0 weights: dpbusd of |w| (once per block) and x with w's sign (per row).
template <int MT>
VNNI_FNS void g8_q8_0_vnni(const BlockQ8_0x8* w, const QRow* x, int nb, float* out, const char* pf) {
  __m256 acc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, sizeof(BlockQ8_0x8));
    __m256i wq[8], wa[8];
    for (int c = 0; c < 8; ++c) {
      wq[c] = _mm256_loadu_si256((const __m256i*)w[b].qs[c]);
      wa[c] = _mm256_abs_epi8(wq[c]);
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w[b].d));
    for (int r = 0; r < MT; ++r) {
      const int8_t* xq = x[r].qs + b * 32;
      __m256i s0 = _mm256_setzero_si256(), s1 = s0;
      for (int c = 0; c < 8; c += 2) {
        s0 = _mm256_dpbusd_epi32(s0, wa[c], _mm256_sign_epi8(bcast4(xq + 4 * c), wq[c]));
        s1 = _mm256_dpbusd_epi32(s1, wa[c + 1], _mm256_sign_epi8(bcast4(xq + 4 * c + 4), wq[c + 1]));
      }
      const __m256 p = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
      acc[r] = _mm256_fmadd_ps(p, _mm256_mul_ps(d, _mm256_set1_ps(x[r].d[b])), acc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm256_storeu_ps(out + r * 8, acc[r]);
}
void group_q4_1x8_vnni(const BlockQ4_1x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  switch (mt) {
    case 1: g8_q4_1_vnni<1>(w, x, nb, out, pf); break;
    case 2: g8_q4_1_vnni<2>(w, x, nb, out, pf); break;
    case 3: g8_q4_1_vnni<3>(w, x, nb, out, pf); break;
    default: g8_q4_1_vnni<4>(w, x, nb, out, pf);
  }
}
void group_q8_0x8_vnni(const BlockQ8_0x8* w, const QRow* x, int mt, int nb, float* out, const char* pf) {
  switch (mt) {
    case 1: g8_q8_0_vnni<1>(w, x, nb, out, pf); break;
    case 2: g8_q8_0_vnni<2>(w, x, nb, out, pf); break;
    case 3: g8_q8_0_vnni<3>(w, x, nb, out, pf); break;
    default: g8_q8_0_vnni<4>(w, x, nb, out, pf);
  }
}

// Two adjacent groups (sixteen weight rows) per pass in 512-bit registers: the same
// dpbusd count per weight byte, but each activation broadcast and each scale multiply
// now serves sixteen rows, and on this path's CPUs a 512-bit dpbusd issues at the
// 256-bit rate (measured: 1.77 G/s both), so the integer work runs at twice the MACs.
// out[r * 16 + j]: j < 8 is row j of w0's group, j >= 8 row j - 8 of w1's.
AVX512_FNS inline __m512i load_pair(const void* a, const void* b) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)a)),
                            _mm256_loadu_si256((const __m256i*)b), 1);
}
AVX512_FNS inline __m512 half_pair(const uint16_t* a, const uint16_t* b) {
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)a)),
                                                 _mm_loadu_si128((const __m128i*)b), 1));
}
AVX512_FNS inline __m512i bcast4_512(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
template <int MT>
AVX512_FNS void g16_q4_1_vnni(const BlockQ4_1x8* w0, const BlockQ4_1x8* w1, const QRow* x, int nb, float* out, const char* pf) {
  __m512 acc[MT], macc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = macc[r] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(15);
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, 2 * sizeof(BlockQ4_1x8));
    __m512i lo[4], hi[4];
    for (int c = 0; c < 4; ++c) {
      const __m512i q = load_pair(w0[b].qs[c], w1[b].qs[c]);
      lo[c] = _mm512_and_si512(q, low);
      hi[c] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
    }
    const __m512 d = half_pair(w0[b].d, w1[b].d), m = half_pair(w0[b].m, w1[b].m);
    for (int r = 0; r < MT; ++r) {
      const int8_t* xq = x[r].qs + b * 32;
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[0], bcast4_512(xq));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[0], bcast4_512(xq + 16));
      for (int c = 1; c < 4; ++c) {
        s0 = _mm512_dpbusd_epi32(s0, lo[c], bcast4_512(xq + 4 * c));
        s1 = _mm512_dpbusd_epi32(s1, hi[c], bcast4_512(xq + 16 + 4 * c));
      }
      const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
      acc[r] = _mm512_fmadd_ps(p, _mm512_mul_ps(d, _mm512_set1_ps(x[r].d[b])), acc[r]);
      macc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(x[r].s[b]), macc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm512_storeu_ps(out + r * 16, _mm512_add_ps(acc[r], macc[r]));
}
// Signed Q8_0 weights against dpbusd's u8 x s8: the activations go in as x + 128 (u8)
// and the 128 * sum(w) this adds is taken off by starting each block's int32 sums at
// -128 * sum(w), computed once per block for all rows (512-bit has no sign_epi8).
template <int MT>
AVX512_FNS void g16_q8_0_vnni(const BlockQ8_0x8* w0, const BlockQ8_0x8* w1, const QRow* x, int nb, float* out, const char* pf) {
  __m512 acc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i ones = _mm512_set1_epi8(1);
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  alignas(32) int8_t xu[32];  // one block of x + 128, read back by 4-byte broadcasts
  for (int b = 0; b < nb; ++b) {
    RAKIS_PREFETCH_PASS(pf, b, 2 * sizeof(BlockQ8_0x8));
    __m512i wq[8], wsum = _mm512_setzero_si512();
    for (int c = 0; c < 8; ++c) {
      wq[c] = load_pair(w0[b].qs[c], w1[b].qs[c]);
      wsum = _mm512_dpbusd_epi32(wsum, ones, wq[c]);
    }
    const __m512i base = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(wsum, 7));
    const __m512 d = half_pair(w0[b].d, w1[b].d);
    for (int r = 0; r < MT; ++r) {
      const __m256i xv = _mm256_loadu_si256((const __m256i*)(x[r].qs + b * 32));
      _mm256_store_si256((__m256i*)xu, _mm256_xor_si256(xv, flip));
      __m512i s0 = base, s1 = _mm512_setzero_si512();
      for (int c = 0; c < 8; c += 2) {
        s0 = _mm512_dpbusd_epi32(s0, bcast4_512(xu + 4 * c), wq[c]);
        s1 = _mm512_dpbusd_epi32(s1, bcast4_512(xu + 4 * c + 4), wq[c + 1]);
      }
      const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
      acc[r] = _mm512_fmadd_ps(p, _mm512_mul_ps(d, _mm512_set1_ps(x[r].d[b])), acc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) _mm512_storeu_ps(out + r * 16, acc[r]);
}
void pair_q4_1x8_vnni(const BlockQ4_1x8* w0, const BlockQ4_1x8* w1, const QRow* x, int mt, int nb, float* out, const char* pf) {
  switch (mt) {
    case 1: g16_q4_1_vnni<1>(w0, w1, x, nb, out, pf); break;
    case 2: g16_q4_1_vnni<2>(w0, w1, x, nb, out, pf); break;
    case 3: g16_q4_1_vnni<3>(w0, w1, x, nb, out, pf); break;
    default: g16_q4_1_vnni<4>(w0, w1, x, nb, out, pf);
  }
}
void pair_q8_0x8_vnni(const BlockQ8_0x8* w0, const BlockQ8_0x8* w1, const QRow* x, int mt, int nb, float* out, const char* pf) {
  switch (mt) {
    case 1: g16_q8_0_vnni<1>(w0, w1, x, nb, out, pf); break;
    case 2: g16_q8_0_vnni<2>(w0, w1, x, nb, out, pf); break;
    case 3: g16_q8_0_vnni<3>(w0, w1, x, nb, out, pf); break;
    default: g16_q8_0_vnni<4>(w0, w1, x, nb, out, pf);
  }
}

#endif

typedef float (*DotQ4)(const BlockQ4_1*, QRow, int);
typedef float (*DotQ8)(const BlockQ8_0*, QRow, int);
typedef void (*Dot4Q4)(const BlockQ4_1*, const QRow*, int, float*);
typedef void (*Dot4Q8)(const BlockQ8_0*, const QRow*, int, float*);
typedef void (*Rows4Q4)(const BlockQ4_1*, int64_t, QRow, int, float*);
typedef void (*Rows4Q8)(const BlockQ8_0*, int64_t, QRow, int, float*);
typedef void (*Tile4Q4)(const BlockQ4_1*, int64_t, const QRow*, int, float*);
typedef void (*Tile4Q8)(const BlockQ8_0*, int64_t, const QRow*, int, float*);
typedef void (*Group8Q4)(const BlockQ4_1x8*, const QRow*, int, int, float*, const char*);
typedef void (*Group8Q8)(const BlockQ8_0x8*, const QRow*, int, int, float*, const char*);
typedef void (*Pair8Q4)(const BlockQ4_1x8*, const BlockQ4_1x8*, const QRow*, int, int, float*, const char*);
typedef void (*Pair8Q8)(const BlockQ8_0x8*, const BlockQ8_0x8*, const QRow*, int, int, float*, const char*);

int g_forced = -1;  // tests pin a path; -1 = best this CPU has

int best_isa() {
#ifdef RAKIS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int current_isa() {
  const int best = best_isa();
  return (g_forced >= 0 && g_forced <= best) ? g_forced : best;
}

// M activation rows quantized for the kernels: qs [M, K] int8, d and s [M, K/32].
struct QRows {
  int8_t* qs; float* d; float* s; int K;
  QRow row(int m) const { const int nb = K / 32; return QRow{qs + (size_t)m * K, d + (size_t)m * nb, s + (size_t)m * nb}; }
};

// Owns the buffers of QRows for up to M rows of K.
struct QRowsBuffer {
  std::vector<int8_t> qs; std::vector<float> d, s;
  QRowsBuffer(int M, int K) : qs((size_t)M * K), d((size_t)M * (K / 32)), s((size_t)M * (K / 32)) {}
  QRows view(int K) { return QRows{qs.data(), d.data(), s.data(), K}; }
};

// The kernels of one SIMD path; a null entry means the path has no such loop.
struct Kernels {
  DotQ4 dq4; DotQ8 dq8;        // 1 weight row x 1 activation row
  Dot4Q4 d4q4; Dot4Q8 d4q8;    // 1 x 4
  Rows4Q4 r4q4; Rows4Q8 r4q8;  // 4 x 1
  Tile4Q4 t4q4; Tile4Q8 t4q8;  // 4 x 4
  Group8Q4 g8q4; Group8Q8 g8q8; int g8rows;  // 8 interleaved x up to g8rows
  Pair8Q4 p8q4; Pair8Q8 p8q8;                // 2 x 8 interleaved x up to g8rows (or null)
};

Kernels kernels_for(int isa) {
  Kernels k{dot_q4_1_scalar, dot_q8_0_scalar, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
            group_q4_1x8_scalar, group_q8_0x8_scalar, 4, nullptr, nullptr};
#ifdef RAKIS_X86
  if (isa == 2)
    k = Kernels{dot_q4_1_vnni,   dot_q8_0_vnni,   dot4_q4_1_vnni,    dot4_q8_0_vnni,
                rows4_q4_1_vnni, rows4_q8_0_vnni, tile4x4_q4_1_vnni, tile4x4_q8_0_vnni,
                group_q4_1x8_vnni, group_q8_0x8_vnni, 4, pair_q4_1x8_vnni, pair_q8_0x8_vnni};
  else if (isa == 1)
    k = Kernels{dot_q4_1_avx2,   dot_q8_0_avx2,   dot4_q4_1_avx2, dot4_q8_0_avx2,
                rows4_q4_1_avx2, rows4_q8_0_avx2, nullptr,        nullptr,
                group_q4_1x8_avx2, group_q8_0x8_avx2, 2, nullptr, nullptr};
#endif
  return k;
}

// Quantize row m of x into q (one thread's share: callers split rows across the team).
inline void quantize_one(const float* x, long long ldx, int m, QRows q) {
  const QRow r = q.row(m);
  auto quantize = quantize_row;
#ifdef RAKIS_X86
  if (current_isa() >= 1) quantize = quantize_row_avx2;
#endif
  quantize(x + (int64_t)m * ldx, q.K, const_cast<int8_t*>(r.qs), const_cast<float*>(r.d), const_cast<float*>(r.s));
}

// y [M, N] (row stride ldy) = rows of q times W^T + bias, split over the calling OpenMP
// team by chunks of weight rows; ends with the team's barrier. Must be reached by every
// thread of the team (it is an orphaned worksharing loop), or from serial code.
// From this many activation rows Q8_0 takes the 512-bit pair kernel: below it the
// per-block sum(w) is not repaid (measured on the 49152x576 head: one group per pass
// 332 us against 398 at M = 1, even at 16, pair 14% ahead at 32).
// Q4_1 from this many rows: below, one group per pass in 256-bit registers. In a
// pure-GEMM loop the pair was no slower at M = 1-3, but batch-1 decode end to end ran
// faster without it (min of 4 runs 5.1 against 6.4 ms/token): the 512-bit code costs
// the rest of the step more than it saves where the weights stream from memory.
#ifndef PAIR_Q4_ROWS
#define PAIR_Q4_ROWS 4
#endif
#ifndef PAIR_Q8_ROWS
#define PAIR_Q8_ROWS 16
#endif
void qgemm_team(const Kernels& k, int wtype, const void* W, QRows q, int M, int N, float* y, long long ldy,
                const float* bias) {
  const int nb = q.K / 32;
  if (wtype >= 2) {  // interleaved: N % 8 == 0, split by groups of eight weight rows
    const int64_t gbytes = (int64_t)nb * (wtype == 2 ? sizeof(BlockQ4_1x8) : sizeof(BlockQ8_0x8));
    // Groups per pass: two where the path has the 512-bit pair kernel (Q8_0 from
    // PAIR_Q8_ROWS activation rows: below, its per-block sum(w) is not repaid).
    const bool pair = wtype == 2 ? k.p8q4 != nullptr && M >= PAIR_Q4_ROWS : k.p8q8 != nullptr && M >= PAIR_Q8_ROWS;
    const int ngroups = N / 8, step = pair ? 2 : 1;
    #pragma omp for schedule(static)
    for (int p = 0; p < (ngroups + step - 1) / step; ++p) {
      const int g = p * step, ng = std::min(step, ngroups - g);
      const uint8_t* wg = (const uint8_t*)W + g * gbytes;
      // groups outer, activation tiles inner: the groups (nb * 160 B each) stay in L1
      // while every activation row passes over them, so weights leave memory once
      for (int m = 0; m < M; m += k.g8rows) {
        const int mt = std::min(k.g8rows, M - m);
        QRow r[4];
        for (int i = 0; i < mt; ++i) r[i] = q.row(m + i);
        float v[64];
        // the first tile prefetches the pass two on (this thread's next but one)
        const char* pf = m == 0 && g + 3 * ng <= ngroups ? (const char*)wg + 2 * ng * gbytes : nullptr;
        if (ng == 2 && wtype == 2) k.p8q4((const BlockQ4_1x8*)wg, (const BlockQ4_1x8*)(wg + gbytes), r, mt, nb, v, pf);
        else if (ng == 2) k.p8q8((const BlockQ8_0x8*)wg, (const BlockQ8_0x8*)(wg + gbytes), r, mt, nb, v, pf);
        else if (wtype == 2) k.g8q4((const BlockQ4_1x8*)wg, r, mt, nb, v, pf);
        else k.g8q8((const BlockQ8_0x8*)wg, r, mt, nb, v, pf);
        const int w = ng * 8;  // outputs per activation row in v
        for (int i = 0; i < mt; ++i)
          for (int j = 0; j < w; ++j)
            y[(int64_t)(m + i) * ldy + g * 8 + j] = v[i * w + j] + (bias ? bias[g * 8 + j] : 0.f);
      }
    }
    return;  // the worksharing loop's barrier has been passed by the whole team
  }
  const int m4 = k.d4q4 ? M / 4 * 4 : 0;  // rows done four at a time
  // A few rows per chunk keep one weight row in L1 while all M activation rows pass
  // over it; the weights are read from memory once per call.
  const int chunk = 16;
  const int nchunks = (N + chunk - 1) / chunk;
  #pragma omp for schedule(static)
  for (int c = 0; c < nchunks; ++c) {
    const int n0 = c * chunk, n1 = std::min(N, n0 + chunk);
    int n = n0;
    // Four weight rows per pass where the path has it: 4 x 4 tiles over the activation
    // rows while four remain (none below four rows), then 4 x 1 for the rest.
    const bool tiles = k.t4q4 != nullptr, rows4 = k.r4q4 != nullptr && (M < 4 || tiles);
    if (rows4) {
      for (; n + 4 <= n1; n += 4) {
        const int mt = tiles ? M / 4 * 4 : 0;
        for (int m = 0; m < mt; m += 4) {
          const QRow r[4] = {q.row(m), q.row(m + 1), q.row(m + 2), q.row(m + 3)};
          float v[16];
          if (wtype == 0) k.t4q4((const BlockQ4_1*)W + (int64_t)n * nb, nb, r, nb, v);
          else k.t4q8((const BlockQ8_0*)W + (int64_t)n * nb, nb, r, nb, v);
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) y[(int64_t)(m + i) * ldy + n + j] = v[i * 4 + j] + (bias ? bias[n + j] : 0.f);
        }
        for (int m = mt; m < M; ++m) {
          float v[4];
          if (wtype == 0) k.r4q4((const BlockQ4_1*)W + (int64_t)n * nb, nb, q.row(m), nb, v);
          else k.r4q8((const BlockQ8_0*)W + (int64_t)n * nb, nb, q.row(m), nb, v);
          for (int i = 0; i < 4; ++i) y[(int64_t)m * ldy + n + i] = v[i] + (bias ? bias[n + i] : 0.f);
        }
      }
    }
    for (; n < n1; ++n) {
      const float bn = bias ? bias[n] : 0.f;
      for (int m = 0; m < m4; m += 4) {
        const QRow r[4] = {q.row(m), q.row(m + 1), q.row(m + 2), q.row(m + 3)};
        float v[4];
        if (wtype == 0) k.d4q4((const BlockQ4_1*)W + (int64_t)n * nb, r, nb, v);
        else k.d4q8((const BlockQ8_0*)W + (int64_t)n * nb, r, nb, v);
        for (int i = 0; i < 4; ++i) y[(int64_t)(m + i) * ldy + n] = v[i] + bn;
      }
      for (int m = m4; m < M; ++m) {
        const float v = wtype == 0 ? k.dq4((const BlockQ4_1*)W + (int64_t)n * nb, q.row(m), nb)
                                   : k.dq8((const BlockQ8_0*)W + (int64_t)n * nb, q.row(m), nb);
        y[(int64_t)m * ldy + n] = v + bn;
      }
    }
  }
}

}  // namespace

// 0 = scalar, 1 = AVX2, 2 = AVX-512 VNNI: the path rakis_qgemm takes now.
extern "C" int rakis_quant_isa() { return current_isa(); }

// Pin a path (tests); a path this CPU lacks, or -1, means the best one.
extern "C" void rakis_quant_force_isa(int isa) { g_forced = isa; }

// The activation quantization the GEMM applies, on the current path (tests check
// every path gives the same bytes): x [M, K] -> qs [M, K] int8, d and s [M, K/32].
extern "C" void rakis_quantize_rows(const float* x, int M, int K, int8_t* qs, float* d, float* s) {
  const QRows q{qs, d, s, K};
  for (int m = 0; m < M; ++m) quantize_one(x, K, m, q);
}

// x [M, K] fp32 rows (row stride ldx floats), W [N, K/32] blocks of `wtype`
// (0 = Q4_1, 1 = Q8_0; 2 = Q4_1x8, 3 = Q8_0x8 as [N/8, K/32] groups, N % 8 == 0),
// y [M, N] fp32 (row stride ldy), bias [N] or null.
// K % 32 == 0 and every pointer valid: the Python caller checks all of it.
extern "C" void rakis_qgemm(int wtype, const void* W, const float* x, long long ldx, float* y, long long ldy,
                            const float* bias, int M, int N, int K, int nthreads) {
  QRowsBuffer buf(M, K);
  const QRows q = buf.view(K);
  const Kernels k = kernels_for(current_isa());
  #pragma omp parallel num_threads(nthreads)
  {
    #pragma omp for schedule(static)
    for (int m = 0; m < M; ++m) quantize_one(x, ldx, m, q);
    qgemm_team(k, wtype, W, q, M, N, y, ldy, bias);
  }
}
