// The pybind11 module, compiled by the host compiler into both extensions: `_cuda` (linked with
// the nvcc-compiled launchers) and `_emu` (linked with the same launchers compiled against the
// emulator). Arrays cross as raw addresses (uintptr_t): the Python side (fastconv/_native) owns
// the arrays, has validated them, and passes CuPy device pointers or NumPy data pointers.
#include <pybind11/pybind11.h>

#include "bindings/bind.h"
#include "device.h"

#ifndef FASTCONV_MODULE
#error "FASTCONV_MODULE must name the extension module (_cuda or _emu)"
#endif
#ifndef FASTCONV_ARCHS
#define FASTCONV_ARCHS ""
#endif

PYBIND11_MODULE(FASTCONV_MODULE, m) {
  m.doc() = "fastconv kernels (see csrc/kernels)";
  m.attr("archs") = FASTCONV_ARCHS;
  m.def("device_count", [] {
    std::string why;
    int n = fc::device_count(&why);
    return pybind11::make_tuple(n, why);
  });
  m.def("device_name", &fc::device_name, pybind11::arg("device") = 0);
  m.def("synchronize", &fc::synchronize, pybind11::call_guard<pybind11::gil_scoped_release>());
  fc::bind_dense(m);
  fc::bind_conv(m);
  fc::bind_pool(m);
  fc::bind_loss(m);
  fc::bind_optim(m);
  fc::bind_check(m);
  fc::bind_selftest(m);
}
