// Convolution forward of AlexNet's conv5 at batch 1 (compacted 96 -> 64
// channels, dense 384 -> 256; 3x3, pad 1, group 2, 13x13), the kernel alone
// (input and weights already in oneDNN's layout), with 1 and 2 OpenMP threads
// taking turns in one process: median us per call, R rounds of N calls.
// Builds against oneDNN 2.x (-DDNNL_V2) or 3.x:
//   g++ -O2 -std=c++14 -fopenmp -DDNNL_V2 conv5_onednn_versions.cpp -ldnnl -o probe_v2
//   (oneDNN 3.2: pip download --no-deps onednn-cpu-gomp onednn-devel-cpu-gomp, unzip
//   both into X, then)
//   g++ -O2 -std=c++14 -fopenmp conv5_onednn_versions.cpp \
//       -IX/onednn_devel_cpu_gomp-2023.2.0.data/data/include \
//       -LX/onednn_cpu_gomp-2023.2.0.data/data/lib \
//       -Wl,-rpath,X/onednn_cpu_gomp-2023.2.0.data/data/lib -l:libdnnl.so.3 -o probe_v3
//   for r in 1 2 3; do for b in probe_v2 probe_v3; do ./$b 2000 9 96 64; ./$b 200 7 384 256; done; done
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "probe_clock.hpp"
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
int main(int argc, char** argv) {
  const int N = atoi(argv[1]), R = atoi(argv[2]), C = atoi(argv[3]), O = atoi(argv[4]);
  const int H = 13, K = 3, G = 2;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  memory::dims src_d = {1, C, H, H}, dst_d = {1, O, H, H}, w_d = {G, O / G, C / G, K, K};
  memory::desc b_md({O}, dt::f32, tag::x);
  memory::desc src_a(src_d, dt::f32, tag::any), w_a(w_d, dt::f32, tag::any),
      dst_a(dst_d, dt::f32, tag::any);
  std::vector<double> times[3];
  const char* impl = "";
  for (int r = 0; r < R; ++r) {
    for (int t = 1; t <= 2; ++t) {
      omp_set_num_threads(t);
#ifdef DNNL_V2
      convolution_forward::desc cd(prop_kind::forward_inference,
          algorithm::convolution_direct, src_a, w_a, b_md, dst_a, {1, 1}, {1, 1}, {1, 1});
      convolution_forward::primitive_desc pd(cd, eng);
#else
      convolution_forward::primitive_desc pd(eng, prop_kind::forward_inference,
          algorithm::convolution_direct, src_a, w_a, b_md, dst_a, {1, 1}, {1, 1}, {1, 1});
#endif
      impl = pd.impl_info_str();
      convolution_forward conv(pd);
      memory src(pd.src_desc(), eng), w(pd.weights_desc(), eng), dst(pd.dst_desc(), eng),
          b(b_md, eng);
      for (auto* m : {&src, &w, &b}) {
        float* p = static_cast<float*>(m->get_data_handle());
        for (size_t i = 0; i < m->get_desc().get_size() / sizeof(float); ++i)
          p[i] = (i % 13) * 0.01f;
      }
      for (int k = 0; k < 3; ++k) {
        conv.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b},
                          {DNNL_ARG_DST, dst}});
        st.wait();
      }
      double t0 = now_us();
      for (int k = 0; k < N; ++k) {
        conv.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b},
                          {DNNL_ARG_DST, dst}});
        st.wait();
      }
      times[t].push_back((now_us() - t0) / N);
    }
  }
  printf("oneDNN %d.%d, %d -> %d channels [%s]: 1 thread %.1f us, 2 threads %.1f us, %.2fx\n",
         DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR, C, O, impl, median(times[1]),
         median(times[2]), median(times[1]) / median(times[2]));
}
