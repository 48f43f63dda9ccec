// Launchers of the pool kernels (pool.cuh). (To be written.)
#pragma once

#include "common.h"

namespace fc {}  // namespace fc
