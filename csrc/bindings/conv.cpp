#include "../kernels/conv.h"

#include "bind.h"

namespace fc {

void bind_conv(py::module_& m) { (void)m; }

}  // namespace fc
