// oneDNN 2.6 (Debian's libdnnl-dev) convolution forward alone, on AlexNet's
// dense and compacted conv shapes (bench_alexnet_compaction.py's default
// plan: conv1 keeps 32 filters, conv2-5 a quarter), in four setups:
//   any   oneDNN chooses the layouts; input reordered from NCHW and output
//         back to it inside the timed pass; weights reordered once, before
//   nchw  input and output forced to NCHW (oneDNN then runs its own im2col +
//         GEMM, "gemm:jit")
//   wusr  layouts chosen, but weights in Caffe's OIHW / GOIHW layout
//   wreo  as "any", with the weights also reordered on every pass
// Median of 20 passes after 5. Build and run:
//   g++ -O2 -std=c++11 onednn_alone.cpp -ldnnl -o onednn_alone
//   OMP_NUM_THREADS=1 ./onednn_alone 1; OMP_NUM_THREADS=1 ./onednn_alone 8
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <string>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Shape { const char* name; int c, h, w, o, k, s, p, g; };

static double now() {
  return std::chrono::duration<double, std::milli>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}

// mode 0: any, 1: nchw, 2: wusr, 3: wreo (above)
static double run(engine& eng, stream& st, const Shape& s, int n, int mode, const char** impl) {
  int oh = (s.h + 2 * s.p - s.k) / s.s + 1, ow = (s.w + 2 * s.p - s.k) / s.s + 1;
  memory::dims src_d = {n, s.c, s.h, s.w}, dst_d = {n, s.o, oh, ow};
  memory::dims w_d = s.g == 1 ? memory::dims{s.o, s.c, s.k, s.k}
                              : memory::dims{s.g, s.o / s.g, s.c / s.g, s.k, s.k};
  tag wtag = s.g == 1 ? tag::oihw : tag::goihw;
  memory::dims b_d = {s.o}, strides = {s.s, s.s}, pad = {s.p, s.p};
  memory::desc src_u(src_d, dt::f32, tag::nchw), dst_u(dst_d, dt::f32, tag::nchw),
      w_u(w_d, dt::f32, wtag), b_md(b_d, dt::f32, tag::x);
  memory::desc src_a = mode != 1 ? memory::desc(src_d, dt::f32, tag::any) : src_u;
  memory::desc dst_a = mode != 1 ? memory::desc(dst_d, dt::f32, tag::any) : dst_u;
  memory::desc w_a = mode == 2 ? w_u : memory::desc(w_d, dt::f32, tag::any);
  convolution_forward::desc cd(prop_kind::forward_inference, algorithm::convolution_direct,
                               src_a, w_a, b_md, dst_a, strides, pad, pad);
  convolution_forward::primitive_desc pd(cd, eng);
  *impl = pd.impl_info_str();
  std::vector<float> src(n * s.c * s.h * s.w), w(s.o * s.c / s.g * s.k * s.k), b(s.o), dst(n * s.o * oh * ow);
  for (auto& v : src) v = rand() / (float)RAND_MAX - 0.5f;
  for (auto& v : w) v = rand() / (float)RAND_MAX - 0.5f;
  memory src_m(src_u, eng, src.data()), w_m(w_u, eng, w.data()), b_m(b_md, eng, b.data()),
      dst_m(dst_u, eng, dst.data());
  memory src_p = src_m, dst_p = dst_m, w_p(pd.weights_desc(), eng);
  reorder(w_m, w_p).execute(st, w_m, w_p);
  bool rs = pd.src_desc() != src_u, rd = pd.dst_desc() != dst_u;
  if (rs) src_p = memory(pd.src_desc(), eng);
  if (rd) dst_p = memory(pd.dst_desc(), eng);
  convolution_forward conv(pd);
  std::vector<double> t;
  for (int it = 0; it < 25; ++it) {
    double t0 = now();
    if (rs) reorder(src_m, src_p).execute(st, src_m, src_p);
    if (mode == 3) reorder(w_m, w_p).execute(st, w_m, w_p);
    conv.execute(st, {{DNNL_ARG_SRC, src_p}, {DNNL_ARG_WEIGHTS, w_p}, {DNNL_ARG_BIAS, b_m},
                      {DNNL_ARG_DST, dst_p}});
    if (rd) reorder(dst_p, dst_m).execute(st, dst_p, dst_m);
    st.wait();
    if (it >= 5) t.push_back(now() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  Shape dense[] = {{"conv1", 3, 227, 227, 96, 11, 4, 0, 1}, {"conv2", 96, 27, 27, 256, 5, 1, 2, 2},
                   {"conv3", 256, 13, 13, 384, 3, 1, 1, 1}, {"conv4", 384, 13, 13, 384, 3, 1, 1, 2},
                   {"conv5", 384, 13, 13, 256, 3, 1, 1, 2}};
  Shape comp[] = {{"conv1", 3, 227, 227, 32, 11, 4, 0, 1}, {"conv2", 32, 27, 27, 64, 5, 1, 2, 2},
                  {"conv3", 64, 13, 13, 96, 3, 1, 1, 1}, {"conv4", 96, 13, 13, 96, 3, 1, 1, 2},
                  {"conv5", 96, 13, 13, 64, 3, 1, 1, 2}};
  for (int mode : {0, 1, 2, 3})
    for (int i = 0; i < 5; ++i) {
      const char *id, *ic;
      double td = run(eng, st, dense[i], n, mode, &id);
      double tc = run(eng, st, comp[i], n, mode, &ic);
      double fd = (double)dense[i].o * dense[i].c / dense[i].g, fc = (double)comp[i].o * comp[i].c / comp[i].g;
      printf("batch %d mode %s %s dense %.3f ms [%s] comp %.3f ms [%s] speedup %.2f flops %.2f ratio %.2f\n",
             n, mode == 0 ? "any " : mode == 1 ? "nchw" : mode == 2 ? "wusr" : "wreo", dense[i].name, td, id, tc, ic, td / tc, fd / fc, td / tc / (fd / fc));
    }
}
