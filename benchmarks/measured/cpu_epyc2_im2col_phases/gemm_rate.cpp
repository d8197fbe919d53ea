// The GEMMs alone of Caffe's CPU convolution for the `make bench` AlexNet
// plan, dense and compacted, through the BLAS that Caffe links (Debian's
// OpenBLAS), with Caffe's call (row-major W x col, one call per image and
// group): the ceiling that GEMM efficiency alone puts on a layer's speed-up
// over its FLOP reduction, im2col and everything else left out. Dense and
// compacted are timed alternately, minimum of 30 rounds of a batch of 8.
// g++ -O2 -o gemm_rate gemm_rate.cpp -lopenblas
// OPENBLAS_NUM_THREADS=1 ./gemm_rate
#include <cblas.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

struct Gemm { int m, k, n, groups; };  // per group: filters, kernel_dim, pixels

double time_batch(const Gemm& g, int batch, const std::vector<float>& w,
    const std::vector<float>& col, std::vector<float>* out) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < g.groups; ++i) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.m, g.n, g.k,
          1.f, &w[i * g.m * g.k], g.k, &col[i * g.k * g.n], g.n, 0.f,
          &(*out)[i * g.m * g.n], g.n);
    }
  }
  return std::chrono::duration<double, std::milli>(
      std::chrono::steady_clock::now() - t0).count();
}

int main() {
  const char* names[] = {"conv1", "conv2", "conv3", "conv4", "conv5"};
  const Gemm dense[] = {{96, 363, 3025, 1}, {128, 1200, 729, 2},
      {384, 2304, 169, 1}, {192, 1728, 169, 2}, {128, 1728, 169, 2}};
  const Gemm compact[] = {{32, 363, 3025, 1}, {32, 400, 729, 2},
      {96, 576, 169, 1}, {48, 432, 169, 2}, {32, 432, 169, 2}};
  const int batch = 8, rounds = 30;
  printf("layer  dense ms (GFLOPS)  compact ms (GFLOPS)  FLOP red  speed-up  of FLOP red\n");
  for (int l = 0; l < 5; ++l) {
    const Gemm* g[2] = {&dense[l], &compact[l]};
    std::vector<float> w[2], col[2], out[2];
    double best[2] = {1e30, 1e30}, flops[2];
    for (int v = 0; v < 2; ++v) {
      w[v].assign(g[v]->groups * g[v]->m * g[v]->k, 0.01f);
      col[v].assign(g[v]->groups * g[v]->k * g[v]->n, 0.02f);
      out[v].resize(g[v]->groups * g[v]->m * g[v]->n);
      flops[v] = 2.0 * g[v]->m * g[v]->k * g[v]->n * g[v]->groups * batch;
    }
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < 2; ++i) {
        const int v = (i + r) % 2;
        best[v] = std::min(best[v], time_batch(*g[v], batch, w[v], col[v], &out[v]));
      }
    }
    const double reduction = flops[0] / flops[1], speedup = best[0] / best[1];
    printf("%-6s %8.2f (%5.1f)    %8.2f (%5.1f)     %6.2fx   %6.2fx   %.2f\n", names[l],
        best[0], flops[0] / best[0] / 1e6, best[1], flops[1] / best[1] / 1e6,
        reduction, speedup, speedup / reduction);
  }
}
