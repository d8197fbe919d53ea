// Caffe's CPU col2im (the backward of im2col: the input gradient of a
// convolution), stock (copied below from Debian's caffe 1.0.0 source, with
// std::fill for caffe_set) against the patched one linked from libcaffe.so
// (row-wise adds), on the shapes of conv layers whose input gradient
// training computes. Same result bit for bit is checked; the two are timed
// alternately, the minimum of R rounds.
//   P=~/.cache/caffe-admm/caffe-py3.11
//   g++ -O3 -o col2im_bench col2im_bench.cpp -L$P/lib -lcaffe -Wl,-rpath,$P/lib
//   ./col2im_bench 50
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace caffe {
template <typename Dtype>
void col2im_cpu(const Dtype* data_col, const int channels, const int height, const int width,
    const int kernel_h, const int kernel_w, const int pad_h, const int pad_w,
    const int stride_h, const int stride_w, const int dilation_h, const int dilation_w,
    Dtype* data_im);
}

inline bool is_a_ge_zero_and_a_lt_b(int a, int b) {
  return static_cast<unsigned>(a) < static_cast<unsigned>(b);
}

template <typename Dtype>
void col2im_stock(const Dtype* data_col, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w,
    const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w,
    Dtype* data_im) {
  std::fill(data_im, data_im + height * width * channels, Dtype(0));
  const int output_h = (height + 2 * pad_h -
    (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  const int output_w = (width + 2 * pad_w -
    (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  const int channel_size = height * width;
  for (int channel = channels; channel--; data_im += channel_size) {
    for (int kernel_row = 0; kernel_row < kernel_h; kernel_row++) {
      for (int kernel_col = 0; kernel_col < kernel_w; kernel_col++) {
        int input_row = -pad_h + kernel_row * dilation_h;
        for (int output_rows = output_h; output_rows; output_rows--) {
          if (!is_a_ge_zero_and_a_lt_b(input_row, height)) {
            data_col += output_w;
          } else {
            int input_col = -pad_w + kernel_col * dilation_w;
            for (int output_col = output_w; output_col; output_col--) {
              if (is_a_ge_zero_and_a_lt_b(input_col, width)) {
                data_im[input_row * width + input_col] += *data_col;
              }
              data_col++;
              input_col += stride_w;
            }
          }
          input_row += stride_h;
        }
      }
    }
  }
}

struct Shape { const char* name; int c, h, w, k, pad, stride; };

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 50;
  const Shape shapes[] = {
      {"lenet conv2", 20, 12, 12, 5, 0, 1},
      {"alexnet conv2", 96, 27, 27, 5, 2, 1},
      {"alexnet conv2 compact", 32, 27, 27, 5, 2, 1},
      {"alexnet conv3", 256, 13, 13, 3, 1, 1},
      {"alexnet conv3 compact", 64, 13, 13, 3, 1, 1},
      {"3x3 s2 56x56", 64, 56, 56, 3, 1, 2},
      {"alexnet conv1 (input)", 3, 227, 227, 11, 0, 4}};
  printf("%-24s %10s %10s %8s  %s\n", "shape", "stock us", "patch us", "speed-up", "equal");
  for (const Shape& s : shapes) {
    const int oh = (s.h + 2 * s.pad - s.k) / s.stride + 1, ow = (s.w + 2 * s.pad - s.k) / s.stride + 1;
    std::vector<float> col(s.c * s.k * s.k * oh * ow), im[2];
    for (size_t i = 0; i < col.size(); ++i) col[i] = std::sin(0.37f * i);
    for (int v = 0; v < 2; ++v) im[v].resize(s.c * s.h * s.w);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < 2; ++i) {
        const int v = (i + r) % 2;
        const auto t0 = std::chrono::steady_clock::now();
        (v ? caffe::col2im_cpu<float> : col2im_stock<float>)(col.data(), s.c, s.h, s.w, s.k, s.k,
            s.pad, s.pad, s.stride, s.stride, 1, 1, im[v].data());
        best[v] = std::min(best[v], std::chrono::duration<double, std::micro>(
            std::chrono::steady_clock::now() - t0).count());
      }
    }
    const bool equal = std::memcmp(im[0].data(), im[1].data(), sizeof(float) * im[0].size()) == 0;
    printf("%-24s %10.1f %10.1f %7.2fx  %s\n", s.name, best[0], best[1], best[0] / best[1],
        equal ? "yes" : "NO");
  }
}
