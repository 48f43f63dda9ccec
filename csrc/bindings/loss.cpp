#include "../kernels/loss.h"

#include "bind.h"

namespace fc {

void bind_loss(py::module_& m) { (void)m; }

}  // namespace fc
