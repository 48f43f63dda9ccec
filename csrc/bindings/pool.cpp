#include "../kernels/pool.h"

#include "bind.h"

namespace fc {

void bind_pool(py::module_& m) { (void)m; }

}  // namespace fc
