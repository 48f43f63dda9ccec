// Launchers of the conv kernels (conv.cuh). (To be written.)
#pragma once

#include "common.h"

namespace fc {}  // namespace fc
