// im2col before (the row-at-a-time patch of commit 5ea237b) and after (runs
// of rows at stride 1 with same padding, rows of <= 16 floats; the row path
// unchanged), standalone: checks that both write the same buffer, then times
// them alternately (200 rounds, minimum of each).
// g++ -O2 -o im2col_bench im2col_bench.cpp
// ./im2col_bench CHANNELS HEIGHT WIDTH KERNEL PAD STRIDE [DILATION]
#include <algorithm>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <chrono>
inline bool is_a_ge_zero_and_a_lt_b(int a, int b) { return static_cast<unsigned>(a) < static_cast<unsigned>(b); }
template <typename Dtype, int S>
inline void copy_strided(const Dtype* src, Dtype* dst, const int n) { for (int i = 0; i < n; ++i) dst[i] = src[S * i]; }

template <typename Dtype>
void im2col_old(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, Dtype* data_col) {
  const int output_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  const int output_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  const int channel_size = height * width;
  for (int channel = channels; channel--; data_im += channel_size) {
    for (int kernel_row = 0; kernel_row < kernel_h; kernel_row++) {
      for (int kernel_col = 0; kernel_col < kernel_w; kernel_col++) {
        const int first_col = -pad_w + kernel_col * dilation_w;
        int lo = first_col >= 0 ? 0 : (stride_w - 1 - first_col) / stride_w;
        int hi = first_col >= width ? 0 : (width - 1 - first_col) / stride_w + 1;
        lo = std::min(lo, output_w);
        hi = std::max(std::min(hi, output_w), lo);
        int input_row = -pad_h + kernel_row * dilation_h;
        for (int output_rows = output_h; output_rows; output_rows--) {
          if (!is_a_ge_zero_and_a_lt_b(input_row, height)) {
            std::fill(data_col, data_col + output_w, Dtype(0));
          } else {
            std::fill(data_col, data_col + lo, Dtype(0));
            const Dtype* src = data_im + input_row * width + first_col + lo * stride_w;
            Dtype* dst = data_col + lo;
            const int n = hi - lo;
            switch (stride_w) {
            case 1: std::memcpy(dst, src, sizeof(Dtype) * n); break;
            case 2: copy_strided<Dtype, 2>(src, dst, n); break;
            case 4: copy_strided<Dtype, 4>(src, dst, n); break;
            default: for (int i = 0; i < n; ++i, src += stride_w) dst[i] = *src;
            }
            std::fill(data_col + hi, data_col + output_w, Dtype(0));
          }
          data_col += output_w;
          input_row += stride_h;
        }
      }
    }
  }
}
// Zeroes n elements: a few (the padding columns of a row) by plain stores,
// where a fill loop would compile into a memset call per row.
template <typename Dtype>
inline void zero_few(Dtype* dst, const int n) {
  switch (n) {
  case 4: dst[3] = Dtype(0);  // fall through
  case 3: dst[2] = Dtype(0);  // fall through
  case 2: dst[1] = Dtype(0);  // fall through
  case 1: dst[0] = Dtype(0);  // fall through
  case 0: break;
  default: std::fill(dst, dst + n, Dtype(0));
  }
}

// memcpy in pieces of at most 2 KB: above that glibc copies with rep movsb,
// slower here on unaligned buffers than its vector loop.
template <typename Dtype>
inline void copy_run(const Dtype* src, Dtype* dst, int n) {
  const int piece = 2048 / sizeof(Dtype);
  for (; n > piece; n -= piece, src += piece, dst += piece) {
    std::memcpy(dst, src, sizeof(Dtype) * piece);
  }
  std::memcpy(dst, src, sizeof(Dtype) * n);
}

// Stride 1 with output rows as wide as the image's ("same" padding): the
// output rows of one kernel offset that read inside the image are one run of
// memory in both buffers. Copy it at once, then zero the padding columns the
// run also covered.
template <typename Dtype>
void im2col_runs(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int dilation_h, const int dilation_w,
    const int output_h, Dtype* data_col) {
  const int channel_size = height * width;
  const int output_size = output_h * width;
  for (int channel = channels; channel--; data_im += channel_size) {
    for (int kernel_row = 0; kernel_row < kernel_h; kernel_row++) {
      const int input_row = -pad_h + kernel_row * dilation_h;
      // output rows [r0, r1) read image rows input_row + r
      const int r0 = std::min(std::max(-input_row, 0), output_h);
      const int r1 = std::max(std::min(height - input_row, output_h), r0);
      for (int kernel_col = 0; kernel_col < kernel_w;
          kernel_col++, data_col += output_size) {
        const int first_col = -pad_w + kernel_col * dilation_w;
        const int lo = std::min(std::max(-first_col, 0), width);
        const int hi = std::max(std::min(width - first_col, width), lo);
        if (r1 == r0 || hi == lo) {
          std::fill(data_col, data_col + output_size, Dtype(0));
          continue;
        }
        Dtype* dst = data_col + r0 * width;
        std::fill(data_col, dst + lo, Dtype(0));
        copy_run(data_im + (input_row + r0) * width + first_col + lo, dst + lo,
            (r1 - r0 - 1) * width + hi - lo);
        const int gap = width - hi + lo;
        for (int r = r0 + 1; r < r1; ++r) {
          zero_few(dst + hi, gap);
          dst += width;
        }
        std::fill(dst + hi, data_col + output_size, Dtype(0));
      }
    }
  }
}

// the patch as committed: the run path, else the row path unchanged
template <typename Dtype>
void im2col_new(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, Dtype* data_col) {
  const int output_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  const int output_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  if (stride_h == 1 && stride_w == 1 && output_w == width &&
      width * sizeof(Dtype) <= 64) {
    im2col_runs(data_im, channels, height, width, kernel_h, kernel_w, pad_h,
        pad_w, dilation_h, dilation_w, output_h, data_col);
    return;
  }
  im2col_old(data_im, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
      stride_h, stride_w, dilation_h, dilation_w, data_col);
}

typedef void Im2col(const float*, int, int, int, int, int, int, int, int, int,
    int, int, float*);

// checks that a and b write the same buffer, then times them alternately
int compare(int argc, char** argv, Im2col* a, Im2col* b, const char* a_name,
    const char* b_name) {
  int C = atoi(argv[1]), H = atoi(argv[2]), W = atoi(argv[3]), K = atoi(argv[4]), P = atoi(argv[5]), S = atoi(argv[6]);
  int D = argc > 7 ? atoi(argv[7]) : 1;
  int oh = (H + 2*P - (D*(K-1)+1))/S + 1, ow = (W + 2*P - (D*(K-1)+1))/S + 1;
  std::vector<float> im(C*H*W), out_a(C*K*K*oh*ow, 7.f), out_b(C*K*K*oh*ow, 9.f);
  for (size_t i = 0; i < im.size(); ++i) im[i] = (float)(i % 1000) + 1;
  a(im.data(), C, H, W, K, K, P, P, S, S, D, D, out_a.data());
  b(im.data(), C, H, W, K, K, P, P, S, S, D, D, out_b.data());
  if (memcmp(out_a.data(), out_b.data(), out_a.size()*4)) { printf("MISMATCH\n"); return 1; }
  double best[2] = {1e9, 1e9};
  for (int r = 0; r < 200; ++r) for (int vv = 0; vv < 2; ++vv) { int v = (vv + r) % 2;
    auto t0 = std::chrono::steady_clock::now();
    if (v == 0) a(im.data(), C, H, W, K, K, P, P, S, S, D, D, out_a.data());
    else b(im.data(), C, H, W, K, K, P, P, S, S, D, D, out_b.data());
    double t = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    best[v] = std::min(best[v], t);
  }
  printf("C=%d %dx%d k%d p%d s%d d%d -> %dx%d: %s %.1f us %s %.1f us (%.2fx)\n", C, H, W, K, P, S, D, oh, ow,
         a_name, best[0], b_name, best[1], best[0]/best[1]);
  return 0;
}

int main(int argc, char** argv) {
  return compare(argc, argv, im2col_old<float>, im2col_new<float>, "old", "new");
}
