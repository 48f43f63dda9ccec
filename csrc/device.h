// What the extension module knows about the device it runs kernels on. Implemented by
// device.cu (CUDA runtime) and by emu/device.cpp (the emulator).
#pragma once

#include <string>

namespace fc {

// Number of usable devices; 0 with `why` set when there are none (e.g. no driver).
int device_count(std::string* why);
std::string device_name(int device);
// Waits for all queued work and turns any asynchronous kernel fault into an exception.
void synchronize();

}  // namespace fc
