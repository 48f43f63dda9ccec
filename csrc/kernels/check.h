// Launcher of the index range kernel (check.cuh). Pointers are device pointers under CUDA and host
// pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
#pragma once

#include "common.h"

namespace fc {

// range[0] = min, range[1] = max of the n >= 1 values of a (int64, contiguous). The kernel runs
// in index_range_blocks(n) blocks; more than one needs a workspace of 2 * that many values.
int64_t index_range_blocks(int64_t n);
void index_range(const int64_t* a, int64_t n, int64_t* range, int64_t* workspace, void* stream);

}  // namespace fc
