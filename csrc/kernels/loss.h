// Launchers of the loss kernels (loss.cuh). (To be written.)
#pragma once

#include "common.h"

namespace fc {}  // namespace fc
