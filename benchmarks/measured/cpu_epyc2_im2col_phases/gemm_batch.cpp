// B per-image GEMMs (Caffe's loop) against one GEMM per group over the whole
// batch's columns plus the copy into Caffe's [image][filter][pixel] layout;
// minimum of 60 rounds each, alternately.
// g++ -O2 -o gemm_batch gemm_batch.cpp -lopenblas
// OPENBLAS_NUM_THREADS=1 ./gemm_batch M K N BATCH [GROUPS]   (per group)
#include <cblas.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
int main(int argc, char** argv) {
  int M = atoi(argv[1]), K = atoi(argv[2]), N = atoi(argv[3]), B = atoi(argv[4]), G = argc > 5 ? atoi(argv[5]) : 1;
  std::vector<float> W(G * M * K), col(G * K * N * B), out(B * G * M * N), big(G * M * N * B);
  for (size_t i = 0; i < W.size(); ++i) W[i] = (i % 7) * 0.1f;
  for (size_t i = 0; i < col.size(); ++i) col[i] = (i % 11) * 0.1f;
  double best[2] = {1e9, 1e9};
  for (int r = 0; r < 60; ++r) for (int v = 0; v < 2; ++v) {
    auto t0 = std::chrono::steady_clock::now();
    if (v == 0) {
      for (int b = 0; b < B; ++b) for (int g = 0; g < G; ++g)  // per image: its own columns (K x N each)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.f, &W[g * M * K], K,
                    &col[(b * G + g) * K * N], N, 0.f, &out[(b * G + g) * M * N], N);
    } else {
      for (int g = 0; g < G; ++g) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N * B, K, 1.f, &W[g * M * K], K,
                    &col[g * K * N * B], N * B, 0.f, &big[g * M * N * B], N * B);
        for (int b = 0; b < B; ++b) for (int m = 0; m < M; ++m)
          memcpy(&out[((b * G + g) * M + m) * N], &big[(g * M + m) * N * B + b * N], N * 4);
      }
    }
    double t = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    best[v] = std::min(best[v], t);
  }
  printf("M=%d K=%d N=%d B=%d G=%d: per image %.0f us, batched %.0f us (%.2fx)\n", M, K, N, B, G, best[0], best[1], best[0] / best[1]);
}
