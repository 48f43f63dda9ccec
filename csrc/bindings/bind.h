// Helpers shared by the per-family binding files, and their entry points.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace fc {

namespace py = pybind11;

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Kernels run without the GIL: other Python threads go on while the device (or emulator) works.
using nogil = py::call_guard<py::gil_scoped_release>;

// "name_f32" / "name_f64"
template <typename T>
std::string typed(const char* name) {
  return std::string(name) + (sizeof(T) == 4 ? "_f32" : "_f64");
}

void bind_dense(py::module_& m);
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_loss(py::module_& m);
void bind_optim(py::module_& m);
void bind_check(py::module_& m);
void bind_selftest(py::module_& m);  // the emulator's self-test kernels

}  // namespace fc
