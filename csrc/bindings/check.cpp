#include "../kernels/check.h"

#include "bind.h"

namespace fc {

void bind_check(py::module_& m) {
  m.def("index_range",
        [](uintptr_t a, int64_t n, uintptr_t range, uintptr_t workspace, uintptr_t stream) {
          index_range(ptr<const int64_t>(a), n, ptr<int64_t>(range), ptr<int64_t>(workspace), ptr<void>(stream));
        },
        nogil(), "range[0], range[1] = min, max of the n >= 1 int64 values at a (workspace: 2 * blocks values)");
  m.def("index_range_blocks", &index_range_blocks, "blocks index_range uses for n values (more than 1 needs a workspace)");
}

}  // namespace fc
