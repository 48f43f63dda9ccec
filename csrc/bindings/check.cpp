#include "../kernels/check.h"

#include "bind.h"

namespace fc {

void bind_check(py::module_& m) {
  m.def("index_range",
        [](uintptr_t a, int64_t n, uintptr_t range, uintptr_t stream) {
          index_range(ptr<const int64_t>(a), n, ptr<int64_t>(range), ptr<void>(stream));
        },
        nogil(), "range[0], range[1] = min, max of the n >= 1 int64 values at a");
}

}  // namespace fc
