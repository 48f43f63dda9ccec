// Launchers of the selftest kernels (selftest.cuh). (To be written.)
#pragma once

#include "common.h"

namespace fc {}  // namespace fc
