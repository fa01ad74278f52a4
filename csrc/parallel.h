// The parallel loop: blocks of work shared out over a thread pool and the calling
// thread. `Pool` is XLA's intra-op pool in the handlers (`ffi::ThreadPool`: num_threads(),
// Schedule(fn)), a plain one in the tile tests.

#ifndef PCS_CSRC_PARALLEL_H_
#define PCS_CSRC_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "common.h"

namespace pcs {

// Products smaller than this many multiply-adds run on the calling thread alone.
constexpr int64_t kMinParallelWork = 1 << 15;

// How long the caller spins on the last blocks before it sleeps: a helper finishing
// within this wakes no one (a futex wake-up costs tens of microseconds).
constexpr std::chrono::microseconds kSpinBeforeSleep{50};

// Runs body(begin, end) over [0, n) in blocks of `block`, on the pool and the caller.
// The caller takes blocks too; once none is left it spins for the helpers' last blocks,
// then sleeps until they are done. Helpers that start late find no block left and only
// drop their reference to the shared counters.
template <typename Pool, typename Body>
void ParallelFor(Pool& pool, int64_t threads, int64_t n, int64_t block,
                 int64_t work, const Body& body) {
  const int64_t blocks = (n + block - 1) / block;
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, blocks - 1);
  if (threads == kCaller || work < kMinParallelWork || helpers <= 0) {
    body(0, n);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, blocks, block, n, body]() {
    for (int64_t b = shared->next.fetch_add(1); b < blocks; b = shared->next.fetch_add(1)) {
      body(b * block, std::min(n, (b + 1) * block));
      if (shared->done.fetch_add(1) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(run)(run));  // a copy each
  run();
  const auto spin_until = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  while (shared->done.load(std::memory_order_acquire) != blocks &&
         std::chrono::steady_clock::now() < spin_until) {
  }
  if (shared->done.load(std::memory_order_acquire) == blocks) return;
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == blocks; });
}

}  // namespace pcs

#endif  // PCS_CSRC_PARALLEL_H_
