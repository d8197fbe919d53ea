// The clock and the median of the two conv5 probes in this folder
// (conv5_harness.cpp, conv5_onednn_versions.cpp).
#ifndef PROBE_CLOCK_HPP_
#define PROBE_CLOCK_HPP_
#include <algorithm>
#include <chrono>
#include <vector>

static double now_us() {
  return std::chrono::duration<double, std::micro>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
#endif  // PROBE_CLOCK_HPP_
