// The CUDA emulation layer: enough of CUDA C++ for our kernels to compile with g++ and run on the
// CPU, exactly as written, so that every kernel's indexing, tiling, barriers and bounds are tested
// on machines without a GPU (and under AddressSanitizer/UBSan).
//
// Model: a launch runs its blocks one after another. The threads of a block are fibers
// (ucontext) that run until they reach a barrier (__syncthreads), a warp-level exchange
// (__shfl_*_sync, __syncwarp) or the end of the kernel. The scheduler (emu.cpp) resumes them
// when the barrier is complete, and raises an error naming the kernel when it can never be
// (some threads exited or wait elsewhere) instead of hanging. Speed is not a goal.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// A kernel's static __shared__ array is one object shared by every thread (fiber) of the block.
#define __shared__ static
#define __constant__ static const

typedef struct emu_stream* cudaStream_t;

// ---- vector types -----------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// A GPU loads or stores a vector type in one access, which must be aligned to the type's size: one
// that is not traps ("misaligned address", cudaErrorMisalignedAddress, which also ends the CUDA
// context), where x86 reads and writes it all the same. So the emulator's vector types check both
// ends of every copy: a load or store through a cast pointer (*reinterpret_cast<const float4*>(p),
// reinterpret_cast<double2*>(p)[0] = v) is a copy from or to the object at that address, and an
// unaligned one raises a kernel error naming the kernel, block and thread.
namespace emu {
[[noreturn]] void misaligned(const void* address, size_t bytes, const char* type);
template <typename V>
V& vector_copy(V& to, const V& from, const char* type) {
  if (reinterpret_cast<uintptr_t>(&from) % alignof(V)) misaligned(&from, alignof(V), type);
  if (reinterpret_cast<uintptr_t>(&to) % alignof(V)) misaligned(&to, alignof(V), type);
  std::memcpy(static_cast<void*>(&to), static_cast<const void*>(&from), sizeof(V));
  return to;
}
}  // namespace emu
#define EMU_VECTOR_COPIES(V)                              \
  V() = default;                                          \
  V(const V& o) { emu::vector_copy(*this, o, #V); }       \
  V& operator=(const V& o) { return emu::vector_copy(*this, o, #V); }

struct __align__(8) float2 {
  float x, y;
  EMU_VECTOR_COPIES(float2)
  float2(float x_, float y_) : x(x_), y(y_) {}
};
struct __align__(16) float4 {
  float x, y, z, w;
  EMU_VECTOR_COPIES(float4)
  float4(float x_, float y_, float z_, float w_) : x(x_), y(y_), z(z_), w(w_) {}
};
struct __align__(16) double2 {
  double x, y;
  EMU_VECTOR_COPIES(double2)
  double2(double x_, double y_) : x(x_), y(y_) {}
};
struct __align__(8) int2 {
  int x, y;
  EMU_VECTOR_COPIES(int2)
  int2(int x_, int y_) : x(x_), y(y_) {}
};
struct __align__(16) int4 {
  int x, y, z, w;
  EMU_VECTOR_COPIES(int4)
  int4(int x_, int y_, int z_, int w_) : x(x_), y(y_), z(z_), w(w_) {}
};
#undef EMU_VECTOR_COPIES
inline float2 make_float2(float x, float y) { return float2(x, y); }
inline float4 make_float4(float x, float y, float z, float w) { return float4(x, y, z, w); }
inline double2 make_double2(double x, double y) { return double2(x, y); }
inline int2 make_int2(int x, int y) { return int2(x, y); }
inline int4 make_int4(int x, int y, int z, int w) { return int4(x, y, z, w); }

namespace emu {

constexpr int kWarpSize = 32;

// State of the thread (fiber) that is running now.
struct ThreadState {
  uint3 idx;          // threadIdx
  int linear;         // x + y*bx + z*bx*by
  int lane, warp;     // linear % 32, linear / 32
};

// The running thread's state; atomic only so that the race detector does not count the scheduler
// switching threads as a race (a relaxed load is a plain load).
extern std::atomic<ThreadState*> current;
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;

// Barriers: each suspends the calling fiber until the scheduler releases it.
void syncthreads();
void syncwarp(unsigned mask);

// Warp exchange: publishes `value` (up to 8 bytes) from this lane, waits for the warp's lanes in
// `mask`, then returns the bytes that `src_lane` published in the same exchange.
uint64_t exchange(unsigned mask, uint64_t value, int src_lane);

void* dynamic_smem();
[[noreturn]] void kernel_error(const std::string& what);

// Runs body() once per thread of every block; throws std::runtime_error naming `kernel` on a
// barrier that can never complete or an error raised inside the kernel.
void launch(const char* kernel, dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace emu

#define threadIdx (emu::current.load(std::memory_order_relaxed)->idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define warpSize (emu::kWarpSize)

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- warp shuffles (the semantics of the CUDA Programming Guide, width a power of two <= 32) ---
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  int lane = emu::current.load(std::memory_order_relaxed)->lane;
  int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(var), src));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = emu::current.load(std::memory_order_relaxed)->lane;
  int src = ((lane & (width - 1)) >= (int)delta) ? lane - (int)delta : lane;
  return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(var), src));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = emu::current.load(std::memory_order_relaxed)->lane;
  int src = ((lane & (width - 1)) + (int)delta < width) ? lane + (int)delta : lane;
  return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(var), src));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  int lane = emu::current.load(std::memory_order_relaxed)->lane;
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(var), src));
}

// ---- atomics: real atomic read-modify-writes (a CAS loop), so that the race detector sees them as
// atomics; blocks and threads never run at once here, so they never actually contend.
namespace emu {
template <typename T, typename Update>
T atomic_update(T* address, Update update) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired = update(old);
  while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    desired = update(old);
  return old;
}
}  // namespace emu

template <typename T>
T atomicAdd(T* address, T val) { return emu::atomic_update(address, [val](T old) { return old + val; }); }
template <typename T>
T atomicSub(T* address, T val) { return emu::atomic_update(address, [val](T old) { return old - val; }); }
template <typename T>
T atomicMax(T* address, T val) {
  static_assert(std::is_integral<T>::value, "CUDA's atomicMax takes integers");
  return emu::atomic_update(address, [val](T old) { return old > val ? old : val; });
}
template <typename T>
T atomicMin(T* address, T val) {
  static_assert(std::is_integral<T>::value, "CUDA's atomicMin takes integers");
  return emu::atomic_update(address, [val](T old) { return old < val ? old : val; });
}
template <typename T>
T atomicExch(T* address, T val) { return emu::atomic_update(address, [val](T) { return val; }); }
template <typename T>
T atomicCAS(T* address, T compare, T val) {
  return emu::atomic_update(address, [compare, val](T old) { return old == compare ? val : old; });
}

// ---- math intrinsics ---------------------------------------------------------------------------
using std::max;
using std::min;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// The high 32 bits of the 64-bit product (fast division by a constant, conv.cuh's FastDiv).
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <typename T>
T __ldg(const T* p) { return *p; }
