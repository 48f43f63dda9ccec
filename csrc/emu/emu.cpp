// The emulator's scheduler: the threads of a block are ucontext fibers; see cuda_emu.h.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <vector>

// AddressSanitizer must be told when the stack changes (fiber switches): otherwise an exception
// thrown inside a kernel (an emulator error) unwinds a stack ASan does not know, and it reports
// false stack-buffer-overflows.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define EMU_START_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define EMU_FINISH_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

// The shared-memory race detector (FASTCONV_RACECHECK builds, -fsanitize=thread): every emulated
// thread is a ThreadSanitizer fiber, switched without implied synchronization, and the only
// happens-before edges between the threads of a block are the ones CUDA guarantees: __syncthreads
// (and warp-level operations within a warp). Two threads touching the same word between barriers,
// one writing, are then a data race that TSan reports with the kernel's source line, the array
// (e.g. a static __shared__ tile) and both threads by name. Blocks run one after another, ordered
// by the scheduler. The scheduler's own bookkeeping is excluded from the analysis.
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#define EMU_RACECHECK 1
#else
#define EMU_RACECHECK 0
#endif

namespace emu {

std::atomic<ThreadState*> current{nullptr};
uint3 block_idx{0, 0, 0};
dim3 block_dim, grid_dim;

namespace {

// Ignores the emulator's own memory accesses (scheduler state shared with the fibers) in race
// checking, for the guard's lifetime. A no-op in other builds.
inline void ignore_begin() {
#if EMU_RACECHECK
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
}
inline void ignore_end() {
#if EMU_RACECHECK
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
}
struct Bookkeeping {
  Bookkeeping() { ignore_begin(); }
  ~Bookkeeping() { ignore_end(); }
};

// Happens-before edges for the race detector (no-ops in other builds).
inline void hb_release(void* sync) {
#if EMU_RACECHECK
  __tsan_release(sync);
#else
  (void)sync;
#endif
}
inline void hb_acquire(void* sync) {
#if EMU_RACECHECK
  __tsan_acquire(sync);
#else
  (void)sync;
#endif
}
inline void tsan_switch_to(void* fiber) {
#if EMU_RACECHECK
  __tsan_switch_to_fiber(fiber, __tsan_switch_to_fiber_no_sync);
#else
  (void)fiber;
#endif
}

enum class Wait { running, barrier, warp, done };

struct Fiber {
  ThreadState state{};
  ucontext_t context{};
  char* stack = nullptr;  // kStackBytes
  Wait wait = Wait::running;
  // At a warp-level operation: its mask, and for a shuffle the value this lane publishes, the lane
  // it reads (-1 at a __syncwarp) and, once the warp releases it, the value read.
  unsigned warp_mask = 0;
  int src_lane = -1;
  uint64_t published = 0, received = 0;
  // Race detection: the TSan fiber, and how many barriers / warp operations this thread passed
  // (their parity picks the sync object, see sync_point()).
  void* tsan_fiber = nullptr;
  unsigned barriers = 0, warp_ops = 0;
};

// Stack size of one emulated thread: kernels keep register tiles (e.g. 8x8 doubles) on it, and
// the sanitizers enlarge frames.
constexpr size_t kStackBytes = 256 * 1024;

struct Block {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> smem;
  ucontext_t scheduler{};
  const void* scheduler_stack = nullptr;  // the launching thread's stack (for the sanitizer)
  size_t scheduler_stack_size = 0;
  Fiber* running = nullptr;
  std::exception_ptr error;
  // Race detection: sync objects (only their addresses matter) for the block's start and end,
  // its barriers and its warps' operations, and the scheduler's own TSan fiber.
  char start_sync = 0, end_sync = 0, barrier_sync[2] = {0, 0};
  std::vector<char> warp_sync;  // [warp][2]
  void* scheduler_fiber = nullptr;
};

Block* block = nullptr;
std::mutex launch_mutex;  // one launch at a time: static __shared__ arrays are process-wide

// Fiber stacks, kept between launches (allocating and touching 256 KiB per thread per launch
// would dominate small launches), each above an inaccessible guard page so that a kernel that
// overflows its stack crashes there instead of silently corrupting a neighbour's stack.
// Guarded by launch_mutex.
std::vector<char*> stack_pool;

char* stack_of(int thread) {
  while ((int)stack_pool.size() <= thread) {
    long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    mprotect(p, page, PROT_NONE);  // stacks grow down: the guard page is below
    stack_pool.push_back(static_cast<char*>(p) + page);
  }
  return stack_pool[thread];
}

void fiber_entry() {
  EMU_FINISH_SWITCH(nullptr, &block->scheduler_stack, &block->scheduler_stack_size);
  hb_acquire(&block->start_sync);  // what the scheduler set up for this block
  ignore_end();  // resume() switched here while ignoring (see there)
  try {
    (*block->body)();
  } catch (...) {
    Bookkeeping ignore;
    block->error = std::current_exception();
  }
  // The rest is the emulator's (the fiber ends here, so the ignore is never closed). Release only
  // now: every access of this fiber, the emulator's reads of the block included, comes before it.
  ignore_begin();
  block->running->wait = Wait::done;
  hb_release(&block->end_sync);
  // Back to the scheduler for good; this fiber's stack is not used again in this block. Jumping
  // (instead of returning through uc_link) keeps the race detector's shadow call stacks balanced:
  // nothing of this function runs after the switch.
  tsan_switch_to(block->scheduler_fiber);
  EMU_START_SWITCH(nullptr, block->scheduler_stack, block->scheduler_stack_size);
  setcontext(&block->scheduler);
}

void suspend(Wait why) {
  Bookkeeping ignore;
  Fiber* self = block->running;
  self->wait = why;
  void* fake_stack = nullptr;
  tsan_switch_to(block->scheduler_fiber);
  EMU_START_SWITCH(&fake_stack, block->scheduler_stack, block->scheduler_stack_size);
  swapcontext(&self->context, &block->scheduler);
  EMU_FINISH_SWITCH(fake_stack, &block->scheduler_stack, &block->scheduler_stack_size);
  ignore_end();  // resume() switched here while ignoring (see there)
}

// Suspends at a barrier (block-wide or warp-level) with the happens-before edges it implies:
// everything each participant did before arriving is visible to all after leaving. Two sync
// objects used alternately: a thread that runs ahead to the next barrier releases into the other
// one, so it does not order its new work before threads still leaving this barrier.
void sync_point(Wait why, char* sync_pair, unsigned& count) {
  char* sync = &sync_pair[count++ & 1];
  hb_release(sync);
  suspend(why);
  hb_acquire(sync);
}

void resume(Fiber& f) {
  block->running = &f;
  current = &f.state;
  f.wait = Wait::running;
  void* fake_stack = nullptr;
  // From the switch on, the scheduler's remaining instructions count as the fiber's: they are
  // ignored until the fiber ends the ignore where it lands (fiber_entry or suspend).
  tsan_switch_to(f.tsan_fiber);
  ignore_begin();
  EMU_START_SWITCH(&fake_stack, f.stack, kStackBytes);
  swapcontext(&block->scheduler, &f.context);
  EMU_FINISH_SWITCH(fake_stack, nullptr, nullptr);
  current = nullptr;
}

std::string describe(const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.state.idx.x << "," << f.state.idx.y << "," << f.state.idx.z << ")";
  return s.str();
}

[[noreturn]] void deadlock(const std::string& detail) {
  std::ostringstream s;
  s << "kernel " << block->kernel << ", block (" << block_idx.x << "," << block_idx.y << ","
    << block_idx.z << "): " << detail;
  throw std::runtime_error(s.str());
}

// Releases each lane waiting at a warp-level operation whose mask's lanes all wait there, with the
// same mask, and hands each shuffling lane the value its source lane published, before any of them
// runs on (so a lane that runs ahead into its next shuffle cannot overwrite a value not yet read).
// Lanes of one warp may wait under different, disjoint masks. Returns whether any lane was released.
bool release_warps(int nthreads) {
  bool released = false;
  for (int w0 = 0; w0 < nthreads; w0 += kWarpSize) {
    const int lanes = std::min(nthreads, w0 + kWarpSize) - w0;
    const unsigned present = lanes == kWarpSize ? 0xffffffffu : (1u << lanes) - 1;
    Fiber* warp = &block->fibers[w0];
    unsigned waiting = 0, exited = 0;
    for (int l = 0; l < lanes; ++l) {
      if (warp[l].wait == Wait::warp) waiting |= 1u << l;
      if (warp[l].wait == Wait::done) exited |= 1u << l;
    }
    unsigned release = 0;
    for (int l = 0; l < lanes; ++l) {
      if (!(waiting >> l & 1)) continue;
      const unsigned mask = warp[l].warp_mask & present;
      if ((mask & waiting) != mask) {
        if (mask & exited) {
          std::ostringstream s;
          s << "a warp-level operation (__shfl_*_sync/__syncwarp) in warp " << w0 / kWarpSize
            << " names lanes in its mask that have exited (mask 0x" << std::hex << mask << ", exited 0x" << exited << ")";
          deadlock(s.str());
        }
        continue;  // some lanes of the mask have not arrived yet
      }
      bool same = true;
      for (int m = 0; m < lanes; ++m)
        if (mask >> m & 1) same &= (warp[m].warp_mask & present) == mask && (warp[m].src_lane < 0) == (warp[l].src_lane < 0);
      if (same) release |= 1u << l;
    }
    for (int l = 0; l < lanes; ++l)
      if (release >> l & 1 && warp[l].src_lane >= 0) warp[l].received = warp[warp[l].src_lane].published;
    for (int l = 0; l < lanes; ++l)
      if (release >> l & 1) warp[l].wait = Wait::running;
    released |= release != 0;
  }
  return released;
}

#if EMU_RACECHECK
// One TSan fiber per emulated thread, named after the CUDA thread and block so that reports say
// which threads raced. Kept between blocks and launches (creating thousands per launch dominated
// the race-check run); blocks are ordered by the scheduler's start/end sync, so reuse hides no race
// within a block. Guarded by launch_mutex.
std::vector<void*> tsan_fiber_pool;

struct TsanFibers {
  explicit TsanFibers(int nthreads) {
    while ((int)tsan_fiber_pool.size() < nthreads) tsan_fiber_pool.push_back(__tsan_create_fiber(0));
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = block->fibers[t];
      f.tsan_fiber = tsan_fiber_pool[t];
      std::ostringstream name;
      name << "thread (" << f.state.idx.x << "," << f.state.idx.y << "," << f.state.idx.z << ") of block ("
           << block_idx.x << "," << block_idx.y << "," << block_idx.z << ") in " << block->kernel;
      __tsan_set_fiber_name(f.tsan_fiber, name.str().c_str());
    }
  }
};
#else
struct TsanFibers {
  explicit TsanFibers(int) {}
};
#endif

void run_block(int nthreads) {
  TsanFibers tsan_fibers(nthreads);
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = block->fibers[t];
    f.wait = Wait::running;
    f.barriers = f.warp_ops = 0;
    getcontext(&f.context);
    f.stack = stack_of(t);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &block->scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  hb_release(&block->start_sync);
  for (;;) {
    bool ran = false;
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = block->fibers[t];
      if (f.wait != Wait::running) continue;
      resume(f);
      ran = true;
      if (block->error) std::rethrow_exception(block->error);
    }
    if (ran) continue;
    int done = 0, at_barrier = 0, at_warp = 0;
    for (int t = 0; t < nthreads; ++t) {
      done += block->fibers[t].wait == Wait::done;
      at_barrier += block->fibers[t].wait == Wait::barrier;
      at_warp += block->fibers[t].wait == Wait::warp;
    }
    if (done == nthreads) {
      hb_acquire(&block->end_sync);  // the next block (and the caller) come after this one
      return;
    }
    if (release_warps(nthreads)) continue;
    if (at_barrier == nthreads) {
      for (auto& f : block->fibers) f.wait = Wait::running;
      continue;
    }
    // Nothing can run and no barrier can complete: report who waits where.
    std::ostringstream s;
    const Fiber* example_done = nullptr;
    const Fiber* example_wait = nullptr;
    for (int t = 0; t < nthreads; ++t) {
      const Fiber& f = block->fibers[t];
      if (f.wait == Wait::done && !example_done) example_done = &f;
      if (f.wait != Wait::done && !example_wait) example_wait = &f;
    }
    s << "__syncthreads() reached by " << at_barrier << " of " << nthreads << " threads; " << done
      << " exited without reaching it";
    if (at_warp) s << " and " << at_warp << " wait at a warp-level operation (__shfl_*_sync/__syncwarp)";
    if (example_done) s << " (e.g. " << describe(*example_done) << ")";
    if (example_wait) s << ", " << describe(*example_wait) << " is waiting";
    s << "; the barrier can never complete";
    deadlock(s.str());
  }
}

}  // namespace

void syncthreads() {
  if (!block) throw std::logic_error("__syncthreads() outside a kernel");
  Fiber* self;
  {
    Bookkeeping ignore;
    self = block->running;
  }
  sync_point(Wait::barrier, block->barrier_sync, self->barriers);
}

namespace {
char* warp_sync_of(const ThreadState& me) { return &block->warp_sync[(size_t)me.warp * 2]; }
}  // namespace

void syncwarp(unsigned mask) {
  if (!block) throw std::logic_error("__syncwarp() outside a kernel");
  Bookkeeping ignore;
  Fiber* self = block->running;
  ThreadState& me = *current;
  self->warp_mask = mask | (1u << me.lane);
  self->src_lane = -1;
  sync_point(Wait::warp, warp_sync_of(me), self->warp_ops);
}

uint64_t exchange(unsigned mask, uint64_t value, int src_lane) {
  if (!block) throw std::logic_error("__shfl_*_sync() outside a kernel");
  ThreadState& me = *current;
  int warp_threads = std::min<int>(kWarpSize, (int)(block_dim.x * block_dim.y * block_dim.z) - me.warp * kWarpSize);
  if (!(mask >> me.lane & 1)) kernel_error("a lane calls a __shfl_*_sync whose mask does not include it");
  if (src_lane < 0 || src_lane >= warp_threads || !(mask >> src_lane & 1)) {
    std::ostringstream s;
    s << "lane " << me.lane << " of warp " << me.warp << " reads lane " << src_lane
      << " in a __shfl_*_sync, which is not in the mask 0x" << std::hex << mask << std::dec
      << " or does not exist (warp of " << warp_threads << " threads): the value is undefined on a GPU";
    kernel_error(s.str());
  }
  Bookkeeping ignore;
  Fiber* self = block->running;
  self->warp_mask = mask;
  self->src_lane = src_lane;
  self->published = value;
  sync_point(Wait::warp, warp_sync_of(me), self->warp_ops);
  return self->received;
}

void misaligned(const void* address, size_t bytes, const char* type) {
  std::ostringstream s;
  s << "misaligned address: a " << bytes << "-byte " << type << " access at " << address << ", which is not "
    << bytes << "-byte aligned (a GPU traps: cudaErrorMisalignedAddress)";
  kernel_error(s.str());
}

void* dynamic_smem() { return block && !block->smem.empty() ? block->smem.data() : nullptr; }

void kernel_error(const std::string& what) {
  std::ostringstream s;
  s << "kernel " << (block ? block->kernel : "?") << ", block (" << block_idx.x << "," << block_idx.y
    << "," << block_idx.z << ")";
  if (ThreadState* t = current.load()) s << ", thread (" << t->idx.x << "," << t->idx.y << "," << t->idx.z << ")";
  s << ": " << what;
  throw std::runtime_error(s.str());
}

void launch(const char* kernel, dim3 grid, dim3 block_shape, size_t smem_bytes, const std::function<void()>& body) {
  long nthreads = (long)block_shape.x * block_shape.y * block_shape.z;
  if (nthreads <= 0 || nthreads > 1024 || block_shape.z > 64)
    throw std::runtime_error(std::string("kernel ") + kernel + ": invalid block shape (at most 1024 threads, z <= 64)");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    throw std::runtime_error(std::string("kernel ") + kernel + ": invalid grid (x at most 2^31 - 1, y and z at most 65535)");
  if (smem_bytes > 227 * 1024)
    throw std::runtime_error(std::string("kernel ") + kernel + ": dynamic shared memory above 227 KiB");
  if ((long)grid.x * grid.y * grid.z == 0) return;

  std::lock_guard<std::mutex> lock(launch_mutex);
  Bookkeeping ignore;  // the scheduler's accesses are not the kernel's
  Block b;
  b.kernel = kernel;
  b.body = &body;
  b.fibers.resize(nthreads);
  b.warp_sync.assign(((nthreads + kWarpSize - 1) / kWarpSize) * 2, 0);
#if EMU_RACECHECK
  b.scheduler_fiber = __tsan_get_current_fiber();
#endif
  for (int t = 0; t < nthreads; ++t) {
    ThreadState& s = b.fibers[t].state;
    s.idx = {(unsigned)(t % block_shape.x), (unsigned)(t / block_shape.x % block_shape.y),
             (unsigned)(t / (block_shape.x * block_shape.y))};
    s.linear = t;
    s.lane = t % kWarpSize;
    s.warp = t / kWarpSize;
  }
  block_dim = block_shape;
  grid_dim = grid;
  block = &b;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          block_idx = {x, y, z};
          // Uninitialized shared memory reads as NaN/garbage, as on a GPU, not as zeros.
          b.smem.assign(smem_bytes, 0xff);
          run_block((int)nthreads);
        }
  } catch (...) {
    block = nullptr;
    current = nullptr;
    throw;
  }
  block = nullptr;
}

}  // namespace emu
