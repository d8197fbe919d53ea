// The stride-1 run path as the patch had it (commit e87a334: memcpy pieces of
// a constant 2 KB, which g++ -O3 expands inline as rep movsq; the padding
// columns zeroed through a switch per row; rows of at most 16 floats) against
// the patch now (pieces of a variable size, one zeroing loop per count of
// padding columns, rows of at most 32 floats; copy_run renamed copy_pieces
// here, beside the included one). Build it with the flags of
// Caffe's Release build, in this directory:
// g++ -O3 -fPIC -o im2col_bench im2col_bench.cpp
// ./im2col_bench CHANNELS HEIGHT WIDTH KERNEL PAD STRIDE [DILATION]
#define main im2col_runs_bench_main
#include "../cpu_epyc2_im2col_runs/im2col_bench.cpp"
#undef main

// Zeroes the G padding columns (a compile-time count: plain stores, where a
// fill loop would compile into a call to memset each) after each of `rows`
// rows of a run; returns the position one row past the last.
template <typename Dtype, int G>
inline Dtype* zero_gaps(Dtype* gap, int rows, const int width) {
  for (; rows; --rows, gap += width) {
    for (int i = 0; i < G; ++i) {
      gap[i] = Dtype(0);
    }
  }
  return gap;
}

// memcpy in pieces of at most 2 KB: above that glibc copies with rep movsb.
// The pieces' size is not a constant, which would let the compiler expand
// the copy inline as rep movsq.
template <typename Dtype>
inline void copy_pieces(const Dtype* src, Dtype* dst, int n) {
  const int piece = 2048 / sizeof(Dtype);
  for (;;) {
    const int m = std::min(n, piece);
    std::memcpy(dst, src, sizeof(Dtype) * m);
    if ((n -= m) == 0) return;
    src += m;
    dst += m;
  }
}

// im2col at stride 1 where the output rows are as wide as the image's rows
// ("same" padding): the output rows of one kernel offset that read inside the
// image are one run of memory in both buffers. Copy the run at once, then
// zero the padding columns that it also covered. Pays where rows are short
// (7x7 to 28x28), as the per-row copy costs a call for a few elements.
template <typename Dtype>
void im2col_runs_o3(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int dilation_h,
    const int dilation_w, const int output_h, Dtype* data_col) {
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
        // output columns [lo, hi) read image columns first_col + c
        const int first_col = -pad_w + kernel_col * dilation_w;
        const int lo = std::min(std::max(-first_col, 0), width);
        const int hi = std::max(std::min(width - first_col, width), lo);
        if (r1 == r0 || hi == lo) {
          std::fill(data_col, data_col + output_size, Dtype(0));
          continue;
        }
        Dtype* dst = data_col + r0 * width;
        std::fill(data_col, dst + lo, Dtype(0));
        copy_pieces(data_im + (input_row + r0) * width + first_col + lo, dst + lo,
            (r1 - r0 - 1) * width + hi - lo);
        // the padding columns between two rows of the run, one loop per count
        Dtype* gap = dst + hi;
        const int rows = r1 - r0 - 1;
        const int gap_cols = width - hi + lo;
        switch (gap_cols) {
        case 0: gap += rows * width; break;
        case 1: gap = zero_gaps<Dtype, 1>(gap, rows, width); break;
        case 2: gap = zero_gaps<Dtype, 2>(gap, rows, width); break;
        case 3: gap = zero_gaps<Dtype, 3>(gap, rows, width); break;
        case 4: gap = zero_gaps<Dtype, 4>(gap, rows, width); break;
        default:
          for (int r = 0; r < rows; ++r, gap += width) {
            std::fill(gap, gap + gap_cols, Dtype(0));
          }
        }
        std::fill(gap, data_col + output_size, Dtype(0));
      }
    }
  }
}

template <typename Dtype>
void im2col_after(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, Dtype* data_col) {
  const int output_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  const int output_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  if (stride_h == 1 && stride_w == 1 && output_w == width &&
      width * sizeof(Dtype) <= 128) {
    im2col_runs_o3(data_im, channels, height, width, kernel_h, kernel_w, pad_h,
        pad_w, dilation_h, dilation_w, output_h, data_col);
    return;
  }
  im2col_old(data_im, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
      stride_h, stride_w, dilation_h, dilation_w, data_col);
}

int main(int argc, char** argv) {
  return compare(argc, argv, im2col_new<float>, im2col_after<float>, "before", "after");
}
