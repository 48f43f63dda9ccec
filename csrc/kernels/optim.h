// Launchers of the optim kernels (optim.cuh). (To be written.)
#pragma once

#include "common.h"

namespace fc {}  // namespace fc
