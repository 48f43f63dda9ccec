#include "../kernels/dense.h"

#include "bind.h"

namespace fc {

template <typename T>
static void bind_dense_typed(py::module_& m) {
  m.def(typed<T>("gemm").c_str(),
        [](uintptr_t a, uintptr_t b, uintptr_t bias, uintptr_t c, int64_t M, int64_t N, int64_t K, bool trans_a,
           bool trans_b, int act, uintptr_t workspace, int tile, int64_t splits, uintptr_t stream) {
          gemm<T>(ptr<const T>(a), ptr<const T>(b), ptr<const T>(bias), ptr<T>(c), M, N, K, trans_a, trans_b, act,
                  ptr<T>(workspace), tile, splits, ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("column_sum").c_str(),
        [](uintptr_t dy, uintptr_t db, int64_t rows, int64_t cols, uintptr_t stream) {
          column_sum<T>(ptr<const T>(dy), ptr<T>(db), rows, cols, ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("relu_forward").c_str(),
        [](uintptr_t x, uintptr_t y, int64_t n, uintptr_t s) { relu_forward<T>(ptr<const T>(x), ptr<T>(y), n, ptr<void>(s)); },
        nogil());
  m.def(typed<T>("relu_backward").c_str(),
        [](uintptr_t dy, uintptr_t x, uintptr_t dx, int64_t n, uintptr_t s) {
          relu_backward<T>(ptr<const T>(dy), ptr<const T>(x), ptr<T>(dx), n, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("sigmoid_forward").c_str(),
        [](uintptr_t x, uintptr_t y, int64_t n, uintptr_t s) { sigmoid_forward<T>(ptr<const T>(x), ptr<T>(y), n, ptr<void>(s)); },
        nogil());
  m.def(typed<T>("sigmoid_backward").c_str(),
        [](uintptr_t dy, uintptr_t y, uintptr_t dx, int64_t n, uintptr_t s) {
          sigmoid_backward<T>(ptr<const T>(dy), ptr<const T>(y), ptr<T>(dx), n, ptr<void>(s));
        },
        nogil());
}

void bind_dense(py::module_& m) {
  m.def("gemm_tile", &gemm_tile, "the block tile gemm uses for an M x N x K product (0 small, 1 large, 2 wide)");
  m.def("gemm_splits", &gemm_splits, "K slices gemm uses for an M x N x K product with that tile (1: no split)",
        py::arg("M"), py::arg("N"), py::arg("K"), py::arg("tile"));
  bind_dense_typed<float>(m);
  bind_dense_typed<double>(m);
}

}  // namespace fc
