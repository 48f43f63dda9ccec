#include "../device.h"

namespace fc {

int device_count(std::string*) { return 1; }
std::string device_name(int) { return "CUDA emulator on the CPU (fibers, one block at a time)"; }
void synchronize() {}

}  // namespace fc
