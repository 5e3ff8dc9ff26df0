// One decode step through every layer of a Llama-family model with quantized
// projections, in a single call and a single OpenMP team (engine/fused_decode.py).
//
// Why: at batch 1 a 30-layer step issued op by op from Python costs ~15 small torch
// calls and 4 GEMM calls per layer, each with its own dispatch and OpenMP fork/join,
// about 6 ms per token against ~8 ms of actual weight streaming. Here the team is
// forked once per step and the small ops (RMS norm with the residual add, rotary, the
// KV store, SiLU-and-multiply, activation quantization) run between GEMMs separated
// only by the team's barriers.
//
// The arithmetic is the unfused path's (engine/model.py with engine.quant projections
// and engine.attention's native decode attention): the same GEMM and attention kernels
// (this file includes their sources), HF Llama's RMSNorm order (s * rsqrt(mean(s^2) +
// eps) * w, fp32) and rotate-half rotary. Sums may be ordered differently from torch's,
// so results agree to float rounding, not bit for bit (tests/engine/kernels).
#include "paged_attention.cpp"
#include "quant_gemm.cpp"

// One layer's weights and cache, as engine/fused_decode.py lays them out (ctypes).
struct RakisLayer {
  const void* w[4];  // fused qkv, o, fused gate_up, down: blocks of wtype[i]
  int wtype[4];      // 0 = Q4_1, 1 = Q8_0, 2 = Q4_1x8, 3 = Q8_0x8 (QuantLinear.kernel_wtype)
  const float* qkv_bias;  // [(Hq + 2 Hkv) D] or null
  const float* norm_in;   // [H]
  const float* norm_post; // [H]
  float* k_cache;         // [NB, bs, Hkv, D]
  float* v_cache;
};

namespace {

// s = h (+ residual); residual = s; x = s * rsqrt(mean(s^2) + eps) * w, one row.
inline void add_norm_row(float* h, float* residual, bool has_residual, const float* w, float eps, int H, float* x) {
  double ss = 0.0;
  for (int i = 0; i < H; ++i) {
    const float s = has_residual ? h[i] + residual[i] : h[i];
    residual[i] = s;
    ss += (double)s * s;
  }
  const float r = 1.f / std::sqrt((float)(ss / H) + eps);
  for (int i = 0; i < H; ++i) x[i] = w[i] * (residual[i] * r);
}

// Rotate-half rotary of one head in place: x1*cos - x2*sin, x2*cos + x1*sin.
inline void rotate_head(float* x, const float* cos, const float* sin, int half) {
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

}  // namespace

// h [B, H] holds the embeddings on entry and the last layer's output on return;
// residual [B, H] is the residual stream (read when has_residual, always written), so
// the caller's final norm is rms_norm(h, w, eps, residual) as in engine/model.py.
// positions and slots int64 [B]; tables int32 [B, maxnb]; lens int32 [B] (context
// length including this token); cos/sin [max_pos, D/2]. The caller checks every index
// (slots inside the caches, table entries inside [0, NB), lens in [1, maxnb * bs],
// positions inside the rotary tables); a bad one here is a bad memory access.
extern "C" void rakis_decode_layers(const RakisLayer* layers, int n_layers, float* h, float* residual,
                                    int has_residual, const int64_t* positions, const int64_t* slots,
                                    const int32_t* tables, const int32_t* lens, int maxnb, int bs,
                                    const float* cos, const float* sin, int B, int H, int Hq, int Hkv, int D,
                                    int I, float eps, float scale, int nthreads) {
  const int Nqkv = (Hq + 2 * Hkv) * D, half = D / 2;
  const int kmax = std::max(std::max(H, Hq * D), I);
  std::vector<float> x((size_t)B * H), qkv((size_t)B * Nqkv), att((size_t)B * Hq * D),
      gu((size_t)B * 2 * I), act((size_t)B * I);
  QRowsBuffer qbuf(B, kmax);
  const Kernels k = kernels_for(current_isa());
  #pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> scores;
    for (int l = 0; l < n_layers; ++l) {
      const RakisLayer& L = layers[l];
      const bool res_in = has_residual || l > 0;
      // Attention block: norm, qkv, rotary + KV store, attention, o.
      const QRows qh = qbuf.view(H);
      #pragma omp for schedule(static)
      for (int b = 0; b < B; ++b) {
        add_norm_row(h + (size_t)b * H, residual + (size_t)b * H, res_in, L.norm_in, eps, H, x.data() + (size_t)b * H);
        quantize_one(x.data(), H, b, qh);
      }
      qgemm_team(k, L.wtype[0], L.w[0], qh, B, Nqkv, qkv.data(), Nqkv, L.qkv_bias);
      #pragma omp for schedule(static)
      for (int j = 0; j < B * (Hq + Hkv); ++j) {
        const int b = j / (Hq + Hkv), head = j % (Hq + Hkv);
        float* row = qkv.data() + (size_t)b * Nqkv;
        const float* c = cos + positions[b] * half;
        const float* s = sin + positions[b] * half;
        rotate_head(row + (size_t)head * D, c, s, half);  // q heads, then k heads
        if (head >= Hq) {
          const int kh = head - Hq;
          const size_t at = ((size_t)slots[b] * Hkv + kh) * D;
          std::memcpy(L.k_cache + at, row + (size_t)head * D, sizeof(float) * D);
          std::memcpy(L.v_cache + at, row + (size_t)(Hq + Hkv + kh) * D, sizeof(float) * D);
        }
      }
      paged_decode_team(qkv.data(), L.k_cache, L.v_cache, tables, lens, att.data(), B, Hq, Hkv, D, bs, maxnb,
                        scale, nthreads, Nqkv, 0, scores);
      const QRows qa = qbuf.view(Hq * D);
      #pragma omp for schedule(static)
      for (int b = 0; b < B; ++b) quantize_one(att.data(), Hq * D, b, qa);
      qgemm_team(k, L.wtype[1], L.w[1], qa, B, H, h, H, nullptr);
      // MLP block: norm, gate_up, SiLU(gate) * up, down.
      #pragma omp for schedule(static)
      for (int b = 0; b < B; ++b) {
        add_norm_row(h + (size_t)b * H, residual + (size_t)b * H, true, L.norm_post, eps, H, x.data() + (size_t)b * H);
        quantize_one(x.data(), H, b, qh);
      }
      qgemm_team(k, L.wtype[2], L.w[2], qh, B, 2 * I, gu.data(), 2 * I, nullptr);
      const QRows qi = qbuf.view(I);
      #pragma omp for schedule(static)
      for (int b = 0; b < B; ++b) {
        const float* gr = gu.data() + (size_t)b * 2 * I;
        float* ar = act.data() + (size_t)b * I;
        for (int i = 0; i < I; ++i) ar[i] = gr[i] / (1.f + std::exp(-gr[i])) * gr[I + i];
        quantize_one(act.data(), I, b, qi);
      }
      qgemm_team(k, L.wtype[3], L.w[3], qi, B, H, h, H, nullptr);
    }
  }
}
