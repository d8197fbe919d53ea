// AlexNet conv5 at batch 1 (compacted: 96 -> 64 channels; dense with args 384 256; 3x3, pad 1, group 2,
// 13x13), in one process: Caffe's ConvolutionLayer<float>::Forward (the oneDNN
// patch's path, weight check included) and the same oneDNN calls made
// directly (input reorder, convolution, output reorder; weights reordered
// once), with 1 and 2 OpenMP threads, taking turns; median us per call of
// each block of N calls, over R rounds. Build and run against the cached
// Caffe build (P=~/.cache/caffe-admm/caffe-py3.11):
//   g++ -O2 -std=c++14 -fopenmp -DCPU_ONLY -DUSE_DNNL conv5_harness.cpp -I$P/include \
//       -L$P/lib -Wl,-rpath,$P/lib -lcaffe -ldnnl -lglog -lgflags -lprotobuf \
//       -lboost_system -o conv5_harness
//   GLOG_minloglevel=2 ./conv5_harness 2000 9          # compacted
//   GLOG_minloglevel=2 ./conv5_harness 200 9 384 256   # dense
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "probe_clock.hpp"
#include "caffe/caffe.hpp"
#include "caffe/layers/conv_layer.hpp"
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
int main(int argc, char** argv) {
  const int N = argc > 1 ? atoi(argv[1]) : 2000, R = argc > 2 ? atoi(argv[2]) : 9;
  const int C = argc > 3 ? atoi(argv[3]) : 96, O = argc > 4 ? atoi(argv[4]) : 64, H = 13, K = 3, G = 2;
  caffe::Caffe::set_mode(caffe::Caffe::CPU);
  caffe::LayerParameter lp;
  lp.set_name("conv5");
  lp.set_type("Convolution");
  caffe::ConvolutionParameter* cp = lp.mutable_convolution_param();
  cp->set_num_output(O);
  cp->add_kernel_size(K);
  cp->add_pad(1);
  cp->set_group(G);
  cp->mutable_weight_filler()->set_type("gaussian");
  cp->mutable_weight_filler()->set_std(0.01);
  caffe::Blob<float> bottom(1, C, H, H), top;
  for (int i = 0; i < bottom.count(); ++i) bottom.mutable_cpu_data()[i] = (i % 7) * 0.1f;
  std::vector<caffe::Blob<float>*> bv(1, &bottom), tv(1, &top);
  caffe::ConvolutionLayer<float> layer(lp);
  layer.SetUp(bv, tv);

  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  memory::dims src_d = {1, C, H, H}, dst_d = {1, O, H, H}, w_d = {G, O / G, C / G, K, K};
  memory::desc src_u(src_d, dt::f32, tag::nchw), dst_u(dst_d, dt::f32, tag::nchw),
      w_u(w_d, dt::f32, tag::goihw), b_md({O}, dt::f32, tag::x);
  convolution_forward::desc cd(prop_kind::forward_inference, algorithm::convolution_direct,
      memory::desc(src_d, dt::f32, tag::any), memory::desc(w_d, dt::f32, tag::any), b_md,
      memory::desc(dst_d, dt::f32, tag::any), {1, 1}, {1, 1}, {1, 1});
  std::vector<float> dst(O * H * H);
  const float* w = layer.blobs()[0]->cpu_data();
  std::vector<double> caffe_t[3], raw_t[3];
  for (int r = 0; r < R; ++r) {
    for (int t = 1; t <= 2; ++t) {
      omp_set_num_threads(t);
      // a primitive made under this thread count, as the layer makes its own
      convolution_forward::primitive_desc pd(cd, eng);
      convolution_forward conv(pd);
      memory src_m(src_u, eng, bottom.mutable_cpu_data()), dst_m(dst_u, eng, dst.data()),
          w_m(w_u, eng, const_cast<float*>(w)),
          b_m(b_md, eng, const_cast<float*>(layer.blobs()[1]->cpu_data()));
      memory src_p(pd.src_desc(), eng), dst_p(pd.dst_desc(), eng), w_p(pd.weights_desc(), eng);
      reorder(w_m, w_p).execute(st, w_m, w_p);
      reorder src_in(src_m, src_p), dst_out(dst_p, dst_m);
      for (int k = 0; k < 2; ++k) layer.Forward(bv, tv);  // a new primitive for t
      double t0 = now_us();
      for (int k = 0; k < N; ++k) layer.Forward(bv, tv);
      caffe_t[t].push_back((now_us() - t0) / N);
      t0 = now_us();
      for (int k = 0; k < N; ++k) {
        src_in.execute(st, src_m, src_p);
        conv.execute(st, {{DNNL_ARG_SRC, src_p}, {DNNL_ARG_WEIGHTS, w_p}, {DNNL_ARG_BIAS, b_m},
                          {DNNL_ARG_DST, dst_p}});
        dst_out.execute(st, dst_p, dst_m);
        st.wait();
      }
      raw_t[t].push_back((now_us() - t0) / N);
    }
  }
  for (int t = 1; t <= 2; ++t)
    printf("%d thread%s: Caffe layer %.1f us, oneDNN calls %.1f us, difference %.1f us\n", t,
           t > 1 ? "s" : "", median(caffe_t[t]), median(raw_t[t]),
           median(caffe_t[t]) - median(raw_t[t]));
  printf("second thread: Caffe layer %.2fx, oneDNN calls %.2fx\n",
         median(caffe_t[1]) / median(caffe_t[2]), median(raw_t[1]) / median(raw_t[2]));
  // outputs agree (another summation order at most)
  float diff = 0;
  for (int i = 0; i < top.count(); ++i) diff = std::max(diff, std::abs(top.cpu_data()[i] - dst[i]));
  printf("max |Caffe - oneDNN calls| = %g\n", diff);
}
