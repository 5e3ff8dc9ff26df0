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
#define RAKIS_AVX2_DOT(u, s) dot_u8s8_avx2(u, s)
RAKIS_DOT4_Q4(dot4_q4_1_avx2, AVX2_FNS, RAKIS_AVX2_DOT)
RAKIS_DOT4_Q8(dot4_q8_0_avx2, AVX2_FNS, RAKIS_AVX2_DOT)

// ---------------------------------------------------------------- AVX-512 VNNI (256-bit ops)
#define VNNI_FNS __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
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

#endif

typedef float (*DotQ4)(const BlockQ4_1*, QRow, int);
typedef float (*DotQ8)(const BlockQ8_0*, QRow, int);
typedef void (*Dot4Q4)(const BlockQ4_1*, const QRow*, int, float*);
typedef void (*Dot4Q8)(const BlockQ8_0*, const QRow*, int, float*);

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

}  // namespace

// 0 = scalar, 1 = AVX2, 2 = AVX-512 VNNI: the path rakis_qgemm takes now.
extern "C" int rakis_quant_isa() { return current_isa(); }

// Pin a path (tests); a path this CPU lacks, or -1, means the best one.
extern "C" void rakis_quant_force_isa(int isa) { g_forced = isa; }

// x [M, K] fp32 rows (row stride ldx floats), W [N, K/32] blocks of `wtype`
// (0 = Q4_1, 1 = Q8_0), y [M, N] fp32 (row stride ldy), bias [N] or null.
// K % 32 == 0 and every pointer valid: the Python caller checks all of it.
extern "C" void rakis_qgemm(int wtype, const void* W, const float* x, long long ldx, float* y, long long ldy,
                            const float* bias, int M, int N, int K, int nthreads) {
  const int nb = K / 32;
  std::vector<int8_t> xq((size_t)M * K);
  std::vector<float> xd((size_t)M * nb), xs((size_t)M * nb);
  const int isa = current_isa();
  DotQ4 dq4 = dot_q4_1_scalar;
  DotQ8 dq8 = dot_q8_0_scalar;
  Dot4Q4 d4q4 = nullptr;
  Dot4Q8 d4q8 = nullptr;
#ifdef RAKIS_X86
  if (isa == 2) { dq4 = dot_q4_1_vnni; dq8 = dot_q8_0_vnni; d4q4 = dot4_q4_1_vnni; d4q8 = dot4_q8_0_vnni; }
  else if (isa == 1) { dq4 = dot_q4_1_avx2; dq8 = dot_q8_0_avx2; d4q4 = dot4_q4_1_avx2; d4q8 = dot4_q8_0_avx2; }
#endif
  const int m4 = d4q4 ? M / 4 * 4 : 0;  // rows done four at a time
  // A few rows per thread-chunk keep one weight row in L1 while all M activation rows
  // pass over it; the weights are read from memory once per call.
  const int chunk = 16;
  const int nchunks = (N + chunk - 1) / chunk;
  #pragma omp parallel num_threads(nthreads)
  {
    #pragma omp for schedule(static)
    for (int m = 0; m < M; ++m)
      quantize_row(x + (int64_t)m * ldx, K, xq.data() + (size_t)m * K, xd.data() + (size_t)m * nb,
                   xs.data() + (size_t)m * nb);
    #pragma omp for schedule(static)
    for (int c = 0; c < nchunks; ++c) {
      const int n0 = c * chunk, n1 = std::min(N, n0 + chunk);
      for (int n = n0; n < n1; ++n) {
        const float bn = bias ? bias[n] : 0.f;
        for (int m = 0; m < m4; m += 4) {
          QRow r[4];
          for (int i = 0; i < 4; ++i)
            r[i] = QRow{xq.data() + (size_t)(m + i) * K, xd.data() + (size_t)(m + i) * nb,
                        xs.data() + (size_t)(m + i) * nb};
          float v[4];
          if (wtype == 0) d4q4((const BlockQ4_1*)W + (int64_t)n * nb, r, nb, v);
          else d4q8((const BlockQ8_0*)W + (int64_t)n * nb, r, nb, v);
          for (int i = 0; i < 4; ++i) y[(int64_t)(m + i) * ldy + n] = v[i] + bn;
        }
        for (int m = m4; m < M; ++m) {
          QRow r{xq.data() + (size_t)m * K, xd.data() + (size_t)m * nb, xs.data() + (size_t)m * nb};
          float v;
          if (wtype == 0) v = dq4((const BlockQ4_1*)W + (int64_t)n * nb, r, nb);
          else v = dq8((const BlockQ8_0*)W + (int64_t)n * nb, r, nb);
          y[(int64_t)m * ldy + n] = v + bn;
        }
      }
    }
  }
}
