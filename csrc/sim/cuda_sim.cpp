// The SIMT simulator's scheduler (cuda_sim.h says what it simulates and what it cannot show).
//
// A launch runs its blocks one after another on the calling OS thread. A block's threads are ucontext fibers with
// stacks of their own (allocated once, reused by later blocks and launches). The scheduler resumes every runnable
// thread in the configured order; a thread runs until it waits at a barrier or returns. When none can run, the
// barriers whose threads have all arrived are released (a warp's lanes for a shuffle, the whole block for
// __syncthreads); if none can be, the block is stuck on a divergent barrier and the launch fails with a message
// saying which threads wait where. An exception inside a thread (a failed check) ends the launch the same way.
//
// Switches: makecontext/swapcontext start a thread on its stack; after that the scheduler and the threads switch
// with _setjmp/_longjmp, which save no signal mask: swapcontext's sigprocmask system call made every switch
// ~0.8 us, and a block of 512 threads passes each barrier with 512 of them.
// (glibc's fortified longjmp refuses to jump between stacks: the switches must not be fortified.)
#undef _FORTIFY_SOURCE
#include "cuda_sim.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

// The bounds of the __shared__ section, from the linker (weak: a build without shared variables has none).
extern "C" {
extern char __start_fh_sim_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_fh_sim_shared[] __attribute__((weak, visibility("hidden")));
}

namespace fh_sim {

Config& config() {
  static Config c;
  return c;
}

fused_hybrid::plan::Geometry& geometry() {
  static fused_hybrid::plan::Geometry g;
  return g;
}

Stats& stats() {
  static Stats s;
  return s;
}

namespace {

// Enough for a kernel's frame with its by-value arguments (the multi-tensor table is ~32 KB) and a failed
// check's exception; a guard page below each stack turns an overflow into a fault instead of corruption.
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned kMaxThreadsPerBlock = 1024;

enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone };

struct Thread {
  ucontext_t ctx;    // its first start
  jmp_buf resume;    // where it waits
  bool started = false;
  char* stack = nullptr;
  State state = State::kReady;
  std::source_location where;  // the barrier it waits at
  int lane_mask = 0;           // of the shuffle it waits in
  uint64_t shuffles = 0;       // shuffles done in this block: picks the exchange buffer
};

struct Sim {
  std::vector<Thread> threads;
  std::vector<uint64_t> exchange;  // [warp][2][32]: double-buffered, see shfl_xor
  ucontext_t scheduler;            // (swapcontext's save area; the threads come back through `back`)
  jmp_buf back;
  unsigned current = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::exception_ptr error;
};

Sim& sim() {
  static Sim s;
  return s;
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

void thread_entry() {
  Sim& s = sim();
  try {
    s.body(s.ctx);
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
  }
  s.threads[s.current].state = State::kDone;
  _longjmp(s.back, 1);  // never returns: its stack is re-armed for the next block
}

__attribute__((noinline)) void yield() {
  Sim& s = sim();
  if (_setjmp(s.threads[s.current].resume) == 0) _longjmp(s.back, 1);
}

// Runs thread i until it waits or returns.
__attribute__((noinline)) void resume(Sim& s, unsigned i) {
  Thread& t = s.threads[i];
  if (_setjmp(s.back) != 0) return;
  if (!t.started) {
    t.started = true;
    swapcontext(&s.scheduler, &t.ctx);
  } else {
    _longjmp(t.resume, 1);
  }
}

std::vector<unsigned> order(unsigned n, int how, uint64_t seed) {
  std::vector<unsigned> o(n);
  std::iota(o.begin(), o.end(), 0u);
  if (how == 1) std::reverse(o.begin(), o.end());
  if (how == 2) {
    std::mt19937_64 rng(seed);
    std::shuffle(o.begin(), o.end(), rng);
  }
  return o;
}

std::string where(const std::source_location& w) {
  return std::string(w.file_name()) + ":" + std::to_string(w.line());
}

// Why no thread of the block can run: which threads wait where, which returned.
[[noreturn]] void stuck(const std::vector<Thread>& ts, unsigned n) {
  std::ostringstream os;
  os << "cuda_sim: divergent barrier in block " << blockIdx.x << " (" << n << " threads):";
  auto list = [&](const char* what, auto pred) {
    std::vector<unsigned> ids;
    for (unsigned i = 0; i < n; ++i)
      if (pred(ts[i])) ids.push_back(i);
    if (ids.empty()) return;
    os << " " << ids.size() << " " << what << " (threads " << ids.front();
    if (ids.size() > 1) os << ".." << ids.back();
    os << ")";
  };
  const Thread* first = nullptr;  // the first waiting thread: the barrier named in the message
  for (unsigned i = 0; i < n && first == nullptr; ++i)
    if (ts[i].state != State::kDone) first = &ts[i];
  auto at_first = [&](const Thread& u) {
    return first != nullptr && u.state == first->state && u.where.line() == first->where.line();
  };
  if (first != nullptr) {
    list(first->state == State::kBlockBarrier ? "wait at __syncthreads" : "wait in __shfl_xor_sync", at_first);
    os << " at " << where(first->where) << ";";
  }
  list("returned", [](const Thread& u) { return u.state == State::kDone; });
  list("wait elsewhere", [&](const Thread& u) { return u.state != State::kDone && !at_first(u); });
  throw std::runtime_error(os.str());
}

// Releases the barriers whose threads have all arrived; false when none could be.
bool release(std::vector<Thread>& ts, unsigned n) {
  bool any = false;
  for (unsigned w0 = 0; w0 < n; w0 += kWarp) {
    const unsigned w1 = std::min(n, w0 + kWarp);
    bool all = true;
    for (unsigned i = w0; i < w1 && all; ++i) all = ts[i].state == State::kWarpBarrier;
    if (!all) continue;
    for (unsigned i = w0 + 1; i < w1; ++i) {
      if (ts[i].where.line() != ts[w0].where.line() || ts[i].lane_mask != ts[w0].lane_mask) {
        throw std::runtime_error("cuda_sim: the lanes of warp " + std::to_string(w0 / kWarp) + " of block " +
                                 std::to_string(blockIdx.x) + " shuffle at different places (" +
                                 where(ts[w0].where) + " xor " + std::to_string(ts[w0].lane_mask) + ", " +
                                 where(ts[i].where) + " xor " + std::to_string(ts[i].lane_mask) + ")");
      }
    }
    for (unsigned i = w0; i < w1; ++i) ts[i].state = State::kReady;
    ++stats().warp_barriers;
    any = true;
  }
  if (any) return true;
  for (unsigned i = 0; i < n; ++i) {
    const Thread& t = ts[i];
    if (t.state != State::kBlockBarrier) return false;
    if (t.where.line() != ts[0].where.line() || std::strcmp(t.where.file_name(), ts[0].where.file_name()) != 0) {
      throw std::runtime_error("cuda_sim: the threads of block " + std::to_string(blockIdx.x) +
                               " wait at different __syncthreads (" + where(ts[0].where) + ", " + where(t.where) +
                               ")");
    }
  }
  for (unsigned i = 0; i < n; ++i) ts[i].state = State::kReady;
  ++stats().block_barriers;
  return true;
}

void run_block(Sim& s, unsigned nthreads, const std::vector<unsigned>& thread_order) {
  if (__start_fh_sim_shared != nullptr) {
    std::memset(__start_fh_sim_shared, 0xff, static_cast<size_t>(__stop_fh_sim_shared - __start_fh_sim_shared));
  }
  for (unsigned i = 0; i < nthreads; ++i) {
    Thread& t = s.threads[i];
    t.ctx.uc_stack.ss_sp = t.stack + kGuardBytes;
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = nullptr;  // thread_entry never returns
    makecontext(&t.ctx, thread_entry, 0);
    t.started = false;
    t.state = State::kReady;
    t.shuffles = 0;
  }
  for (;;) {
    for (const unsigned i : thread_order) {
      if (s.threads[i].state != State::kReady) continue;
      s.current = i;
      threadIdx = dim3(i);
      resume(s, i);
      if (s.error) std::rethrow_exception(s.error);
    }
    bool done = true;
    for (unsigned i = 0; i < nthreads; ++i) done = done && s.threads[i].state == State::kDone;
    if (done) return;
    if (!release(s.threads, nthreads)) stuck(s.threads, nthreads);
  }
}

}  // namespace

void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1) {
    throw std::runtime_error("cuda_sim: only 1-D grids and blocks are simulated");
  }
  if (block.x == 0 || block.x > kMaxThreadsPerBlock) {
    throw std::runtime_error("cuda_sim: a block of " + std::to_string(block.x) + " threads (1..1024 allowed)");
  }
  if (grid.x == 0) throw std::runtime_error("cuda_sim: a launch of 0 blocks (CUDA reports an invalid config)");
  const std::lock_guard<std::mutex> lock(launch_mutex());
  Sim& s = sim();
  // A ucontext_t points into itself (its saved FP state): the threads must never move, so the vector never
  // reallocates, and each context is initialized where it stays.
  s.threads.reserve(kMaxThreadsPerBlock);
  while (s.threads.size() < block.x) {
    void* mem = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("cuda_sim: cannot allocate a thread stack");
    mprotect(mem, kGuardBytes, PROT_NONE);
    Thread& t = s.threads.emplace_back();
    t.stack = static_cast<char*>(mem);
    getcontext(&t.ctx);  // once: makecontext re-arms it for every block
  }
  s.exchange.assign(static_cast<size_t>((block.x + kWarp - 1) / kWarp) * 2 * kWarp, 0);
  s.body = body;
  s.ctx = ctx;
  s.error = nullptr;
  gridDim = grid;
  blockDim = block;
  const Config& c = config();
  Stats& st = stats();
  ++st.launches;
  const auto blocks = order(grid.x, c.block_order, c.seed);
  for (size_t k = 0; k < blocks.size(); ++k) {
    blockIdx = dim3(blocks[k]);
    run_block(s, block.x, order(block.x, c.thread_order, c.seed * 1000003u + blocks[k]));
    ++st.blocks;
    st.threads += block.x;
  }
}

void block_barrier(const std::source_location& w) {
  if (config().fault_no_syncthreads) return;
  Sim& s = sim();
  Thread& t = s.threads[s.current];
  t.state = State::kBlockBarrier;
  t.where = w;
  yield();
}

// Lane l writes its value to its slot of the warp's exchange buffer, waits until every lane has written, and reads
// lane l ^ lane_mask's slot. Two buffers, alternating per shuffle: a lane may write shuffle k+1's value while
// another still has to read shuffle k's, but cannot write k+2's before every lane has passed k+1's barrier, i.e.
// read k's value.
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const std::source_location& w) {
  Sim& s = sim();
  const unsigned tid = s.current, lane = tid % kWarp, warp = tid / kWarp;
  const unsigned lanes = std::min(kWarp, blockDim.x - warp * kWarp);
  const unsigned expect = lanes == kWarp ? 0xffffffffu : (1u << lanes) - 1u;
  if (mask != expect) {
    throw std::runtime_error("cuda_sim: __shfl_xor_sync at " + where(w) + " with mask " + std::to_string(mask) +
                             " in a warp of " + std::to_string(lanes) + " lanes");
  }
  if (width < 1 || width > static_cast<int>(kWarp) || (width & (width - 1)) != 0) {
    throw std::runtime_error("cuda_sim: __shfl_xor_sync width " + std::to_string(width));
  }
  Thread& t = s.threads[tid];
  uint64_t* ex = &s.exchange[(static_cast<size_t>(warp) * 2 + (t.shuffles++ & 1u)) * kWarp];
  ex[lane] = bits;
  t.state = State::kWarpBarrier;
  t.where = w;
  t.lane_mask = lane_mask;
  yield();
  if (config().fault_skip_shuffle == lane_mask) return bits;
  unsigned src = lane ^ static_cast<unsigned>(lane_mask);
  const unsigned seg = lane / static_cast<unsigned>(width);
  if (src / static_cast<unsigned>(width) > seg) return bits;  // a later segment: the caller's own value
  if (src >= lanes) {
    throw std::runtime_error("cuda_sim: __shfl_xor_sync at " + where(w) + " reads lane " + std::to_string(src) +
                             " of a warp of " + std::to_string(lanes));
  }
  return ex[src];
}

void misaligned(const void* p, size_t bytes) {
  std::ostringstream os;
  os << "cuda_sim: misaligned " << bytes * 8 << "-bit vector access at " << p << " (thread " << threadIdx.x
     << ", block " << blockIdx.x << ")";
  throw std::runtime_error(os.str());
}

}  // namespace fh_sim
