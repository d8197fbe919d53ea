// A convolution's forward as im2col + one GEMM per image (Caffe) against
// im2col + GEMM on tiles of T output rows, whose column buffer stays in
// cache; the same plain im2col in both. Minimum of 30 interleaved rounds.
//   g++ -O2 -std=c++17 -I/usr/include/x86_64-linux-gnu/openblas-pthread
//       conv_tiles.cpp -o conv_tiles -lopenblas
//   OPENBLAS_NUM_THREADS=1 ./conv_tiles C H KERNEL STRIDE PAD FILTERS T IMAGES
#include <cblas.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cmath>
static void im2col_rows(const float* im, int C, int H, int W, int k, int p, int s,
                        int OW, int h0, int h1, float* col) {
  const int n = (h1 - h0) * OW;
  for (int c = 0; c < C; ++c)
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw, col += n) {
        float* d = col;
        for (int oh = h0; oh < h1; ++oh) {
          int ih = oh * s - p + kh;
          if (ih < 0 || ih >= H) { std::fill(d, d + OW, 0.f); d += OW; continue; }
          const float* r = im + (c * H + ih) * W;
          for (int ow = 0; ow < OW; ++ow) {
            int iw = ow * s - p + kw;
            *d++ = (iw >= 0 && iw < W) ? r[iw] : 0.f;
          }
        }
      }
}
int main(int argc, char** argv) {
  int C = atoi(argv[1]), H = atoi(argv[2]), k = atoi(argv[3]), s = atoi(argv[4]),
      p = atoi(argv[5]), M = atoi(argv[6]), T = atoi(argv[7]), images = atoi(argv[8]);
  int W = H, OH = (H + 2 * p - k) / s + 1, OW = OH, K = C * k * k, N = OH * OW;
  std::vector<float> im(C * H * W * images), w(M * K), out(M * N * images), out2(M * N * images);
  for (auto& x : im) x = rand() / float(RAND_MAX);
  for (auto& x : w) x = rand() / float(RAND_MAX);
  std::vector<float> col(K * N), tile(K * T * OW);
  auto full = [&](float* o) {
    for (int i = 0; i < images; ++i) {
      im2col_rows(&im[i * C * H * W], C, H, W, k, p, s, OW, 0, OH, col.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, w.data(), K, col.data(), N, 0, o + i * M * N, N);
    }
  };
  auto tiled = [&](float* o) {
    for (int i = 0; i < images; ++i)
      for (int h0 = 0; h0 < OH; h0 += T) {
        int h1 = std::min(OH, h0 + T), n = (h1 - h0) * OW;
        im2col_rows(&im[i * C * H * W], C, H, W, k, p, s, OW, h0, h1, tile.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, n, K, 1, w.data(), K, tile.data(), n, 0, o + i * M * N + h0 * OW, N);
      }
  };
  auto imonly = [&](float*) {
    for (int i = 0; i < images; ++i) im2col_rows(&im[i * C * H * W], C, H, W, k, p, s, OW, 0, OH, col.data());
  };
  auto imtiles = [&](float*) {
    for (int i = 0; i < images; ++i)
      for (int h0 = 0; h0 < OH; h0 += T) im2col_rows(&im[i * C * H * W], C, H, W, k, p, s, OW, h0, std::min(OH, h0 + T), tile.data());
  };
  full(out.data()); tiled(out2.data());
  double md = 0;  // the two ways' largest difference (another GEMM split)
  for (size_t j = 0; j < out.size(); ++j)
    md = std::max(md, static_cast<double>(std::abs(out[j] - out2[j])));
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  for (int r = 0; r < 30; ++r) {
    auto t = [&](int idx, auto fn) {
      auto a = std::chrono::steady_clock::now();
      fn(out.data());
      double d = std::chrono::duration<double, std::milli>(
          std::chrono::steady_clock::now() - a).count();
      best[idx] = std::min(best[idx], d);
    };
    t(0, full); t(1, tiled); t(2, imonly); t(3, imtiles);
  }
  printf("C=%d H=%d k=%d s=%d p=%d M=%d K=%d N=%d tile=%d rows: full %.3f ms tiled %.3f ms (%.2fx) | im2col full %.3f tiles %.3f | maxdiff %g\n",
         C, H, k, s, p, M, K, N, T, best[0], best[1], best[0] / best[1], best[2], best[3], md);
}
