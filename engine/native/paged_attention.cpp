// CPU paged decode attention for the rakis engine (fp32), called through ctypes.
//
// Reads each sequence's K/V straight from the paged cache ([num_blocks, block_size,
// Hkv, D] per layer, docs/CONTRACTS.md) instead of gathering them into a dense copy
// first, and computes all query heads of a KV head in one pass over its rows (GQA).
// Plain C ABI, no torch headers: it builds in about a second with the system g++.
// Parallel over sequences (or sequence x KV head when there are few sequences) with
// OpenMP; the process already has torch's libgomp loaded, so both share one runtime.
#include <cmath>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <omp.h>

// One job = one sequence and a range of KV heads; a token's K/V rows for all heads are
// contiguous ([Hkv, D]), so a job that owns all heads reads whole rows. Two passes
// (scores, then softmax-weighted V) with the scores in a per-thread buffer: decode
// contexts are short enough that this beats an online softmax here.
// Only context positions [t0, L) are attended (t0 > 0 for a sliding-window layer whose
// context is longer than its window); score rows are L - t0 long.
static void attend(const float* q, const float* kc, const float* vc, const int32_t* tab, int t0, int L,
                   float* out, int h0, int h1, int Hq, int Hkv, int D, int bs, float scale, float* s) {
  const int g = Hq / Hkv;
  const int rows = (h1 - h0) * g;
  const int n = L - t0;
  for (int t = t0; t < L; ++t) {
    const float* kp = kc + ((int64_t)tab[t / bs] * bs + t % bs) * Hkv * D;
    for (int h = h0; h < h1; ++h) {
      const float* kh = kp + h * D;
      for (int i = 0; i < g; ++i) {
        const float* qi = q + (h * g + i) * D;
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int d = 0; d < D; ++d) acc += qi[d] * kh[d];
        s[(size_t)((h - h0) * g + i) * n + (t - t0)] = acc * scale;
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* si = s + (size_t)r * n;
    float m = -INFINITY;
    for (int t = 0; t < n; ++t) m = std::max(m, si[t]);
    float sum = 0.f;
    #pragma omp simd reduction(+:sum)
    for (int t = 0; t < n; ++t) { si[t] = expf(si[t] - m); sum += si[t]; }
    const float inv = 1.f / sum;
    #pragma omp simd
    for (int t = 0; t < n; ++t) si[t] *= inv;
  }
  float* ob = out + h0 * g * D;
  for (int i = 0; i < rows * D; ++i) ob[i] = 0.f;
  for (int t = t0; t < L; ++t) {
    const float* vp = vc + ((int64_t)tab[t / bs] * bs + t % bs) * Hkv * D;
    for (int h = h0; h < h1; ++h) {
      const float* vh = vp + h * D;
      for (int i = 0; i < g; ++i) {
        const float p = s[(size_t)((h - h0) * g + i) * n + (t - t0)];
        float* oi = ob + ((h - h0) * g + i) * D;
        #pragma omp simd
        for (int d = 0; d < D; ++d) oi[d] += p * vh[d];
      }
    }
  }
}
// Decode attention split over the calling OpenMP team (an orphaned worksharing loop:
// every thread of the team must reach it, as engine/native/decode_step.cpp's layers
// do); `s` is the calling thread's score buffer. Arguments as below.
static void paged_decode_team(const float* q, const float* kc, const float* vc, const int32_t* tables,
                              const int32_t* lens, float* out, int B, int Hq, int Hkv, int D, int bs, int maxnb,
                              float scale, int nthreads, long long q_stride, int window, std::vector<float>& s) {
  const bool per_head = B < 2 * nthreads;
  const int jobs = per_head ? B * Hkv : B;
  #pragma omp for schedule(dynamic, 1)
  for (int job = 0; job < jobs; ++job) {
    const int b = per_head ? job / Hkv : job;
    const int h0 = per_head ? job % Hkv : 0, h1 = per_head ? h0 + 1 : Hkv;
    const int L = lens[b];
    const int t0 = (window > 0 && L > window) ? L - window : 0;
    s.resize((size_t)Hq * (L - t0));
    attend(q + (int64_t)b * q_stride, kc, vc, tables + (int64_t)b * maxnb, t0, L,
           out + (int64_t)b * Hq * D, h0, h1, Hq, Hkv, D, bs, scale, s.data());
  }
}

// q [B, Hq, D] with rows q_stride floats apart (heads contiguous), out [B, Hq, D],
// k/v cache [NB, bs, Hkv, D], tables [B, maxnb], lens [B];
// every pointer contiguous, every lens[b] in [1, maxnb * bs], every table entry used in
// [0, NB): the Python caller checks all of it (a bad index here is a bad memory read).
// window > 0 limits each query to the last `window` context positions (sliding-window
// attention: key t is seen when t > L - 1 - window, as Hugging Face masks it); 0 = all.
extern "C" void rakis_paged_decode_window_f32(
    const float* q, const float* kc, const float* vc, const int32_t* tables, const int32_t* lens,
    float* out, int B, int Hq, int Hkv, int D, int bs, int maxnb, float scale, int nthreads,
    long long q_stride, int window) {
  #pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> s;
    paged_decode_team(q, kc, vc, tables, lens, out, B, Hq, Hkv, D, bs, maxnb, scale, nthreads, q_stride, window, s);
  }
}

// Full-context decode attention (every layer of a model without sliding windows).
extern "C" void rakis_paged_decode_f32(
    const float* q, const float* kc, const float* vc, const int32_t* tables, const int32_t* lens,
    float* out, int B, int Hq, int Hkv, int D, int bs, int maxnb, float scale, int nthreads,
    long long q_stride) {
  rakis_paged_decode_window_f32(q, kc, vc, tables, lens, out, B, Hq, Hkv, D, bs, maxnb, scale, nthreads,
                                q_stride, 0);
}
