#include "../kernels/pool.h"

#include "bind.h"

namespace fc {

// The geometry crosses as 11 integers, in PoolGeometry's order.
static PoolGeometry geometry(int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw,
                             int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return PoolGeometry{planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw};
}

template <typename T>
static void bind_pool_typed(py::module_& m) {
  m.def(typed<T>("max_pool2d_forward").c_str(),
        [](uintptr_t x, uintptr_t y, uintptr_t indices, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
           int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uintptr_t stream) {
          max_pool2d_forward<T>(ptr<const T>(x), ptr<T>(y), ptr<int64_t>(indices),
                                geometry(planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw), ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("max_pool2d_backward").c_str(),
        [](uintptr_t dy, uintptr_t indices, uintptr_t dx, uintptr_t workspace, int64_t planes, int64_t H, int64_t W,
           int64_t Ho, int64_t Wo, uintptr_t stream) {
          max_pool2d_backward<T>(ptr<const T>(dy), ptr<const int64_t>(indices), ptr<T>(dx), ptr<int64_t>(workspace),
                                 geometry(planes, H, W, Ho, Wo, 1, 1, 1, 1, 0, 0), ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("avg_pool2d_forward").c_str(),
        [](uintptr_t x, uintptr_t y, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t kh,
           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uintptr_t stream) {
          avg_pool2d_forward<T>(ptr<const T>(x), ptr<T>(y), geometry(planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw),
                                ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("avg_pool2d_backward").c_str(),
        [](uintptr_t dy, uintptr_t dx, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t kh,
           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uintptr_t stream) {
          avg_pool2d_backward<T>(ptr<const T>(dy), ptr<T>(dx), geometry(planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw),
                                 ptr<void>(stream));
        },
        nogil());
}

void bind_pool(py::module_& m) {
  m.def("max_pool2d_plane_fits", &max_pool2d_plane_fits,
        "whether max_pool2d_backward gathers (H, W) planes from (Ho, Wo) outputs in shared memory");
  bind_pool_typed<float>(m);
  bind_pool_typed<double>(m);
}

}  // namespace fc
