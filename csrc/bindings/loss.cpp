#include "../kernels/loss.h"

#include "bind.h"

namespace fc {

template <typename T>
static void bind_loss_typed(py::module_& m) {
  m.def(typed<T>("softmax_cross_entropy_forward").c_str(),
        [](uintptr_t logits, uintptr_t labels, uintptr_t weight, double smoothing, uintptr_t probs, uintptr_t row_loss,
           uintptr_t row_weight, uintptr_t loss, int64_t N, int64_t C, uintptr_t s) {
          softmax_cross_entropy_forward<T>(ptr<const T>(logits), ptr<const int64_t>(labels), ptr<const T>(weight),
                                           smoothing, ptr<T>(probs), ptr<double>(row_loss), ptr<double>(row_weight),
                                           ptr<T>(loss), N, C, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("softmax_cross_entropy_backward").c_str(),
        [](uintptr_t probs, uintptr_t labels, uintptr_t weight, double smoothing, uintptr_t totals, uintptr_t dlogits,
           int64_t N, int64_t C, uintptr_t s) {
          softmax_cross_entropy_backward<T>(ptr<const T>(probs), ptr<const int64_t>(labels), ptr<const T>(weight),
                                            smoothing, ptr<double>(totals), ptr<T>(dlogits), N, C, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("softmax_cross_entropy_with_grad").c_str(),
        [](uintptr_t logits, uintptr_t labels, uintptr_t weight, double smoothing, uintptr_t dlogits,
           uintptr_t row_loss, uintptr_t row_weight, uintptr_t totals, uintptr_t loss, int64_t N, int64_t C,
           uintptr_t s) {
          softmax_cross_entropy_with_grad<T>(ptr<const T>(logits), ptr<const int64_t>(labels), ptr<const T>(weight),
                                             smoothing, ptr<T>(dlogits), ptr<double>(row_loss),
                                             ptr<double>(row_weight), ptr<double>(totals), ptr<T>(loss), N, C,
                                             ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("bce_with_logits_forward").c_str(),
        [](uintptr_t x, uintptr_t t, uintptr_t pw, uintptr_t partials, uintptr_t loss, int64_t n, int64_t C,
           uintptr_t s) {
          bce_with_logits_forward<T>(ptr<const T>(x), ptr<const T>(t), ptr<const T>(pw), ptr<double>(partials),
                                     ptr<T>(loss), n, C, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("bce_with_logits_backward").c_str(),
        [](uintptr_t x, uintptr_t t, uintptr_t pw, uintptr_t dx, int64_t n, int64_t C, uintptr_t s) {
          bce_with_logits_backward<T>(ptr<const T>(x), ptr<const T>(t), ptr<const T>(pw), ptr<T>(dx), n, C,
                                      ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("mse_forward").c_str(),
        [](uintptr_t p, uintptr_t t, uintptr_t partials, uintptr_t loss, int64_t n, uintptr_t s) {
          mse_forward<T>(ptr<const T>(p), ptr<const T>(t), ptr<double>(partials), ptr<T>(loss), n, ptr<void>(s));
        },
        nogil());
  m.def(typed<T>("mse_backward").c_str(),
        [](uintptr_t p, uintptr_t t, uintptr_t dp, int64_t n, uintptr_t s) {
          mse_backward<T>(ptr<const T>(p), ptr<const T>(t), ptr<T>(dp), n, ptr<void>(s));
        },
        nogil());
}

void bind_loss(py::module_& m) {
  m.def("loss_partial_count", &loss_partial_count,
        "Length of the double workspace the BCE and MSE forward kernels need for n elements.");
  bind_loss_typed<float>(m);
  bind_loss_typed<double>(m);
}

}  // namespace fc
