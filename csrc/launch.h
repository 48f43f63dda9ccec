// One way to launch a kernel: `<<<grid, block, smem, stream>>>` under nvcc, the emulator's
// launcher under g++. Every launch is checked; a failure becomes a C++ exception (a Python
// RuntimeError through pybind11) that names the kernel. Never exit().
#pragma once

#include <stdexcept>
#include <string>

#include "compat.h"

namespace fc {

// Grid size for n items, b per block, in the 32-bit range CUDA accepts for gridDim.x.
inline unsigned int blocks_for(int64_t n, int64_t per_block) {
  int64_t blocks = (n + per_block - 1) / per_block;
  return (unsigned int)(blocks < 1 ? 1 : (blocks > 2147483647 ? 2147483647 : blocks));
}

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("fastconv: " + what);
}

#ifdef __CUDACC__

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastconv: CUDA error in ") + what + ": " + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + ")");
}

template <typename... KernelArgs, typename... Args>
void launch(const char* name, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, void* stream,
            Args... args) {
  if ((int64_t)grid.x * grid.y * grid.z == 0) return;
  if (smem > 48 * 1024) check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), name);
  kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  check_cuda(cudaGetLastError(), name);
}

#else

template <typename... KernelArgs, typename... Args>
void launch(const char* name, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, void* /*stream*/,
            Args... args) {
  emu::launch(name, grid, block, smem, [&] { kernel(args...); });
}

#endif

}  // namespace fc
