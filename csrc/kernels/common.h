// Types shared by the kernel launchers (compiled by nvcc or against the emulator) and the
// pybind11 bindings (compiled by the host compiler). No CUDA here.
#pragma once

#include <cstdint>

namespace fc {

// The activation fused into a GEMM or convolution epilogue. Values are part of the Python ABI.
enum Activation : int { kActNone = 0, kActRelu = 1, kActSigmoid = 2 };

}  // namespace fc
