// im2col before (the patch of commit 68c3a80: runs of rows at stride 1,
// else one row at a time) and after (plus: at a column stride below the
// kernel's width, with output rows of 8 floats or more, each image row split
// into its stride's phases first), standalone: checks that both write the
// same buffer, then times them alternately (200 rounds, minimum of each).
// g++ -O3 -o im2col_bench im2col_bench.cpp   (Caffe's Release flags; or -O2)
// ./im2col_bench CHANNELS HEIGHT WIDTH KERNEL PAD STRIDE [DILATION]
// The patch before (im2col_new there: the run path, else the row path) and
// the harness (compare), from the run path's own benchmark; its main()
// renamed out of the way.
#define main im2col_runs_bench_main
#include "../cpu_epyc2_im2col_runs/im2col_bench.cpp"
#undef main

template <typename Dtype>
void im2col_before(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, Dtype* data_col) {
  im2col_new(data_im, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
      stride_h, stride_w, dilation_h, dilation_w, data_col);
}

// im2col at a column stride S > 1 where the kernel overlaps itself along the
// row (kernel_w > S, as AlexNet's conv1: 11 wide at stride 4). The row path
// gathers every S-th element, one load and store per output element, and
// each image element is gathered about kernel_w / S times per row. Instead,
// split each zero-padded image row once into its S phases (columns p, p + S,
// p + 2S, ...): every output row is then one contiguous range of a phase,
// copied with memcpy. phases and padded are scratch buffers of this thread.
template <typename Dtype, int S>
inline void split_phases(const Dtype* row, Dtype* phases, const int n) {
  for (int j = 0; j < n; ++j) {
    for (int p = 0; p < S; ++p) {
      phases[p * n + j] = row[j * S + p];
    }
  }
}

template <typename Dtype>
void im2col_phases(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, const int output_h,
    const int output_w, Dtype* data_col) {
  static thread_local std::vector<Dtype> phases, padded;
  // padded column p + j * stride_w is element j of phase p
  const int phase_w = (width + 2 * pad_w + stride_w - 1) / stride_w;
  const int row_size = phase_w * stride_w;
  phases.resize(static_cast<size_t>(height) * row_size);
  padded.resize(row_size);
  std::fill(padded.begin(), padded.end(), Dtype(0));
  const int channel_size = height * width;
  for (int channel = channels; channel--; data_im += channel_size) {
    Dtype* dst = phases.data();
    for (int row = 0; row < height; ++row, dst += row_size) {
      std::memcpy(&padded[pad_w], data_im + row * width, sizeof(Dtype) * width);
      switch (stride_w) {
      case 2:
        split_phases<Dtype, 2>(padded.data(), dst, phase_w);
        break;
      case 4:
        split_phases<Dtype, 4>(padded.data(), dst, phase_w);
        break;
      default:
        for (int p = 0; p < stride_w; ++p) {
          for (int j = 0; j < phase_w; ++j) {
            dst[p * phase_w + j] = padded[j * stride_w + p];
          }
        }
      }
    }
    for (int kernel_row = 0; kernel_row < kernel_h; kernel_row++) {
      for (int kernel_col = 0; kernel_col < kernel_w; kernel_col++) {
        // output column c reads padded column offset + c * stride_w
        const int offset = kernel_col * dilation_w;
        const Dtype* src = phases.data() + (offset % stride_w) * phase_w +
            offset / stride_w;
        int input_row = -pad_h + kernel_row * dilation_h;
        for (int output_rows = output_h; output_rows; output_rows--) {
          if (!is_a_ge_zero_and_a_lt_b(input_row, height)) {
            std::fill(data_col, data_col + output_w, Dtype(0));
          } else {
            std::memcpy(data_col, src + input_row * row_size,
                sizeof(Dtype) * output_w);
          }
          data_col += output_w;
          input_row += stride_h;
        }
      }
    }
  }
}

// the patch now: as before, plus the phase path
template <typename Dtype>
void im2col_after(const Dtype* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, Dtype* data_col) {
  const int output_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  const int output_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  if (stride_w > 1 && kernel_w > stride_w && output_w >= 8) {
    im2col_phases(data_im, channels, height, width, kernel_h, kernel_w, pad_h,
        pad_w, stride_h, stride_w, dilation_h, dilation_w, output_h, output_w,
        data_col);
    return;
  }
  im2col_before(data_im, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
      stride_h, stride_w, dilation_h, dilation_w, data_col);
}

int main(int argc, char** argv) {
  return compare(argc, argv, im2col_before<float>, im2col_after<float>, "before", "after");
}
