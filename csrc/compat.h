// What a kernel source includes first: the CUDA runtime under nvcc, the emulator under g++.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
// Dynamic shared memory as an array of T. Declared as bytes so that one kernel template can be
// instantiated for float and double without conflicting `extern __shared__` declarations.
#define FC_DYNAMIC_SMEM(T, name)                                   \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  T* name = reinterpret_cast<T*>(name##_bytes_)
#else
#include "emu/cuda_emu.h"
#define FC_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem())
#endif

#include <cstdint>
