#include "../kernels/conv.h"

#include <pybind11/stl.h>

#include <array>

#include "bind.h"

namespace fc {

// The geometry travels from Python as one tuple, in ConvShape's field order:
// (N, C, H, W, C_out, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups).
using ShapeTuple = std::array<int64_t, 16>;

static ConvShape conv_shape(const ShapeTuple& d) {
  return ConvShape{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]};
}

template <typename T>
static void bind_conv_typed(py::module_& m) {
  m.def(typed<T>("conv2d_forward").c_str(),
        [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, const ShapeTuple& shape, int act, uintptr_t stream) {
          conv2d_forward<T>(ptr<const T>(x), ptr<const T>(w), ptr<const T>(bias), ptr<T>(y), conv_shape(shape), act,
                            ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("conv2d_backward_data").c_str(),
        [](uintptr_t dy, uintptr_t w, uintptr_t dx, const ShapeTuple& shape, uintptr_t stream) {
          conv2d_backward_data<T>(ptr<const T>(dy), ptr<const T>(w), ptr<T>(dx), conv_shape(shape), ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("conv2d_backward_weight").c_str(),
        [](uintptr_t dy, uintptr_t x, uintptr_t dw, uintptr_t db, uintptr_t workspace, int64_t splits,
           const ShapeTuple& shape, uintptr_t stream) {
          conv2d_backward_weight<T>(ptr<const T>(dy), ptr<const T>(x), ptr<T>(dw), ptr<T>(db), ptr<T>(workspace),
                                    splits, conv_shape(shape), ptr<void>(stream));
        },
        nogil());
}

void bind_conv(py::module_& m) {
  m.def("conv2d_backward_weight_slices",
        [](const ShapeTuple& shape, bool bias) { return conv2d_backward_weight_slices(conv_shape(shape), bias); });
  m.def("conv_set_index32_limit", &conv_set_index32_limit);
  bind_conv_typed<float>(m);
  bind_conv_typed<double>(m);
}

}  // namespace fc
