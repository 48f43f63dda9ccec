#include "../kernels/optim.h"

#include "bind.h"

namespace fc {

void bind_optim(py::module_& m) { (void)m; }

}  // namespace fc
