#include "../kernels/selftest.h"

#include "bind.h"

namespace fc {

void bind_selftest(py::module_& m) { (void)m; }

}  // namespace fc
