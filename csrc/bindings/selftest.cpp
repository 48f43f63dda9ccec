// The emulator's self-test kernels (csrc/kernels/selftest.cuh), for tests/test_emulator.py.
#include "../kernels/selftest.h"

#include "bind.h"

namespace fc {

template <typename T>
static void bind_selftest_typed(py::module_& m) {
  m.def(typed<T>("selftest_reverse").c_str(),
        [](uintptr_t x, uintptr_t y, int64_t n, int threads, bool use_barrier, uintptr_t s) {
          selftest_reverse<T>(ptr<const T>(x), ptr<T>(y), n, threads, use_barrier, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("selftest_block_sum").c_str(),
        [](uintptr_t x, uintptr_t sums, int64_t n, int threads, bool use_barrier, uintptr_t s) {
          selftest_block_sum<T>(ptr<const T>(x), ptr<T>(sums), n, threads, use_barrier, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("selftest_warp_ops").c_str(),
        [](uintptr_t x, uintptr_t scan, uintptr_t bcast, uintptr_t xsum, uintptr_t wsum, int64_t n, int threads,
           uintptr_t s) {
          selftest_warp_ops<T>(ptr<const T>(x), ptr<T>(scan), ptr<T>(bcast), ptr<T>(xsum), ptr<T>(wsum), n, threads,
                               ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("selftest_histogram").c_str(),
        [](uintptr_t bins_of, uintptr_t w, uintptr_t keys, uintptr_t counts, uintptr_t weights, uintptr_t maxima,
           int64_t n, int nbins, int threads, uintptr_t s) {
          selftest_histogram<T>(ptr<const int>(bins_of), ptr<const T>(w), ptr<const int>(keys), ptr<int>(counts),
                                ptr<T>(weights), ptr<int>(maxima), n, nbins, threads, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("selftest_vector_copy").c_str(),
        [](uintptr_t x, uintptr_t y, int64_t groups, uintptr_t s) {
          selftest_vector_copy<T>(ptr<const T>(x), ptr<T>(y), groups, ptr<void>(s));
        },
        nogil());
}

void bind_selftest(py::module_& m) {
  bind_selftest_typed<float>(m);
  bind_selftest_typed<double>(m);
  m.def("selftest_coords",
        [](uintptr_t out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, uintptr_t s) {
          selftest_coords(ptr<int>(out), gx, gy, gz, bx, by, bz, ptr<void>(s));
        },
        nogil());
  m.def("selftest_early_return",
        [](uintptr_t y, int threads, int active, uintptr_t s) { selftest_early_return(ptr<float>(y), threads, active, ptr<void>(s)); },
        nogil());
  m.def("selftest_shuffle",
        [](uintptr_t y, unsigned mask, int src_lane, uintptr_t s) { selftest_shuffle(ptr<float>(y), mask, src_lane, ptr<void>(s)); },
        nogil());
}

}  // namespace fc
