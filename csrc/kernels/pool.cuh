// pool kernels. (To be written: the math of forward and backward and the parallel decomposition go here.)
#pragma once

#include "common.cuh"
#include "pool.h"
