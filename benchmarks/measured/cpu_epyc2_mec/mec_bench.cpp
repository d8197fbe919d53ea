// MEC-style lowering (Cho & Brand 2017) against Caffe's im2col + one GEMM, for the
// stride-1 AlexNet conv layers, dense and compacted, batch 8, one image at a time as
// Caffe's forward does. im2col is the patched Caffe's own (linked from libcaffe.so).
// MEC: L[(c,j)][yp*Wo + x] = padded input[c][yp][x + j] (C*kw rows, Hp*Wo columns); then
// out = sum_i W_i * L[:, i*Wo : i*Wo + Ho*Wo] with W_i[m][(c,j)] = W[m][c][i][j] (repacked
// per image here), kh GEMMs per group with ldb = Hp*Wo.
//   P=~/.cache/caffe-admm/caffe-py3.11
//   g++ -O3 -o mec_bench mec_bench.cpp -L$P/lib -lcaffe -lopenblas -Wl,-rpath,$P/lib
//   OPENBLAS_NUM_THREADS=1 ./mec_bench 30
#include <cblas.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace caffe {
template <typename Dtype>
void im2col_cpu(const Dtype* data_im, const int channels, const int height, const int width,
    const int kernel_h, const int kernel_w, const int pad_h, const int pad_w,
    const int stride_h, const int stride_w, const int dilation_h, const int dilation_w,
    Dtype* data_col);
}

struct Conv { int cin, cout, groups, k, pad, h; };

static double now_ms() {
  return std::chrono::duration<double, std::milli>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Caffe's path: im2col of the whole image, then one GEMM per group.
static void forward_im2col(const Conv& c, const float* in, const float* w, float* col, float* out) {
  const int ho = c.h + 2 * c.pad - c.k + 1, n = ho * ho;
  const int cg = c.cin / c.groups, mg = c.cout / c.groups, kd = cg * c.k * c.k;
  caffe::im2col_cpu<float>(in, c.cin, c.h, c.h, c.k, c.k, c.pad, c.pad, 1, 1, 1, 1, col);
  for (int g = 0; g < c.groups; ++g)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mg, n, kd, 1.f, w + g * mg * kd, kd,
        col + g * kd * n, n, 0.f, out + g * mg * n, n);
}

static void forward_mec(const Conv& c, const float* in, const float* w, float* low, float* wr,
    float* out) {
  const int ho = c.h + 2 * c.pad - c.k + 1, n = ho * ho, hp = c.h + 2 * c.pad, ln = hp * ho;
  const int cg = c.cin / c.groups, mg = c.cout / c.groups, kd = cg * c.k * c.k, kw = cg * c.k;
  // lower: one row per (channel, kernel column), the padded rows one after another
  for (int ch = 0; ch < c.cin; ++ch) {
    for (int j = 0; j < c.k; ++j) {
      float* dst = low + (ch * c.k + j) * ln;
      std::memset(dst, 0, sizeof(float) * c.pad * ho);
      std::memset(dst + (c.pad + c.h) * ho, 0, sizeof(float) * c.pad * ho);
      const int x0 = std::max(0, c.pad - j), x1 = std::min(ho, c.h + c.pad - j);
      for (int y = 0; y < c.h; ++y) {
        float* row = dst + (c.pad + y) * ho;
        const float* src = in + (ch * c.h + y) * c.h + (x0 + j - c.pad);
        std::fill(row, row + x0, 0.f);
        std::memcpy(row + x0, src, sizeof(float) * (x1 - x0));
        std::fill(row + x1, row + ho, 0.f);
      }
    }
  }
  for (int g = 0; g < c.groups; ++g) {
    const float* wg = w + g * mg * kd;
    for (int i = 0; i < c.k; ++i) {  // W_i: mg x (cg * k), row (c, j)
      float* wi = wr + i * mg * kw;
      for (int m = 0; m < mg; ++m)
        for (int ch = 0; ch < cg; ++ch)
          std::memcpy(wi + m * kw + ch * c.k, wg + m * kd + (ch * c.k + i) * c.k,
              sizeof(float) * c.k);
    }
    for (int i = 0; i < c.k; ++i)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mg, n, kw, 1.f, wr + i * mg * kw, kw,
          low + g * kw * ln + i * ho, ln, i ? 1.f : 0.f, out + g * mg * n, n);
  }
}

int main(int argc, char** argv) {
  const int batch = 8, rounds = argc > 1 ? atoi(argv[1]) : 30;
  const char* names[] = {"conv2", "conv3", "conv4", "conv5"};
  const Conv dense[] = {{96, 256, 2, 5, 2, 27}, {256, 384, 1, 3, 1, 13},
      {384, 384, 2, 3, 1, 13}, {384, 256, 2, 3, 1, 13}};
  const Conv compact[] = {{32, 64, 2, 5, 2, 27}, {64, 96, 1, 3, 1, 13},
      {96, 96, 2, 3, 1, 13}, {96, 64, 2, 3, 1, 13}};
  printf("layer  net      im2col ms  mec ms  mec/im2col  max rel diff\n");
  for (int l = 0; l < 4; ++l) {
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};
    const Conv* cs[2] = {&dense[l], &compact[l]};
    std::vector<float> in[2], w[2], col[2], low[2], wr[2], out[2][2];
    for (int v = 0; v < 2; ++v) {
      const Conv& c = *cs[v];
      const int ho = c.h + 2 * c.pad - c.k + 1;
      in[v].resize(batch * c.cin * c.h * c.h);
      for (size_t i = 0; i < in[v].size(); ++i) in[v][i] = std::sin(0.37f * i);
      w[v].resize(c.cout * (c.cin / c.groups) * c.k * c.k);
      for (size_t i = 0; i < w[v].size(); ++i) w[v][i] = std::cos(0.11f * i);
      col[v].resize(c.cin * c.k * c.k * ho * ho);
      low[v].resize(c.cin * c.k * (c.h + 2 * c.pad) * ho);
      wr[v].resize(c.k * (c.cout / c.groups) * (c.cin / c.groups) * c.k);
      for (int a = 0; a < 2; ++a) out[v][a].resize(batch * c.cout * ho * ho);
    }
    for (int r = 0; r < rounds; ++r) {
      for (int s = 0; s < 4; ++s) {
        const int v = ((s + r) % 4) / 2, a = (s + r) % 2;  // rotate the four timings
        const Conv& c = *cs[v];
        const int ho = c.h + 2 * c.pad - c.k + 1;
        const double t0 = now_ms();
        for (int b = 0; b < batch; ++b) {
          const float* x = &in[v][b * c.cin * c.h * c.h];
          float* y = &out[v][a][b * c.cout * ho * ho];
          if (a == 0) forward_im2col(c, x, w[v].data(), col[v].data(), y);
          else forward_mec(c, x, w[v].data(), low[v].data(), wr[v].data(), y);
        }
        best[v][a] = std::min(best[v][a], now_ms() - t0);
      }
    }
    for (int v = 0; v < 2; ++v) {
      double diff = 0, scale = 0;
      for (size_t i = 0; i < out[v][0].size(); ++i) {
        diff = std::max(diff, (double)std::fabs(out[v][0][i] - out[v][1][i]));
        scale = std::max(scale, (double)std::fabs(out[v][0][i]));
      }
      printf("%-6s %-8s %8.3f  %8.3f  %6.3f      %.1e\n", names[l], v ? "compact" : "dense",
          best[v][0], best[v][1], best[v][1] / best[v][0], diff / scale);
    }
    printf("%-6s speed-up / FLOP reduction: im2col %.2f, mec %.2f\n", names[l],
        best[0][0] / best[1][0] / (l == 0 ? 12.0 : 16.0),
        best[0][1] / best[1][1] / (l == 0 ? 12.0 : 16.0));
  }
}
