// cortex::ThreadPool and cortex::parallel_for: a small persistent pool tuned for many short
// parallel regions (one per level batch, ~10-200 us each).
//
// - Workers are std::threads created lazily by the first parallel_for that needs them.
// - Thread count (calling thread included) = CORTEX_NUM_THREADS if set to a positive integer,
//   else std::thread::hardware_concurrency().
// - After a region, workers spin for a short while (CORTEX_SPIN_US, default 300 us) waiting for the
//   next one, then block on a condition variable. 300 us spans the gap between back-to-back runs of a kernel (ONNX
//   Runtime's call and the run's serial steps before its first region): waking a sleeping worker costs the caller
//   ~13 us and the worker ~30 us on a virtual machine (2-core Xeon VM, 2026-12-05), per run with a 50 us spin.
// - Indices are handed out dynamically (one atomic claim each); the caller takes part and returns
//   once every index has run. It never waits for a worker that has not claimed anything, so a
//   worker that wakes late (sleeping, or preempted on a busy machine) costs nothing; split work
//   into a few pieces per thread to benefit from that.
// - Measured dispatch cost of a trivial 2-way region: ~1 us with the worker spinning, ~3 us when
//   it has to be woken (Xeon, quiet machine).
// - parallel_for is safe to call from several threads and from inside f: a call that finds the
//   pool busy runs inline on the calling thread (same results, just serial).
// - The library holding the pool stays unloadable: kernels are compiled with -fno-gnu-unique
//   (std::to_string & co. would otherwise put STB_GNU_UNIQUE symbols into them, and glibc never
//   unloads such a library) and hold no thread_local objects with destructors.
// - The pool lives in a function-local static, so its destructor (which stops and joins the
//   workers) runs at process exit or at dlclose of the library that contains it: the EP's
//   dlclose of a kernel no session uses returns only once the workers are gone.
// - After fork(), the child never uses the parent's (vanished) workers: it runs regions inline.
// - An exception thrown by f is caught, the region is cut short, and the first exception is
//   rethrown on the calling thread once every participant has stopped.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define CORTEX_HAVE_GETPID 1
#endif

#ifndef CORTEX_CPU_RELAX
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CORTEX_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CORTEX_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CORTEX_CPU_RELAX() ((void)0)
#endif
#endif

namespace cortex {

namespace parallel_detail {

inline int parse_positive_env(const char* name, int fallback, int max_value) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (end == s || v <= 0) return fallback;
  if (v > max_value) v = max_value;
  return static_cast<int>(v);
}

inline int default_num_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  int fallback = hw == 0 ? 1 : static_cast<int>(hw);
  return parse_positive_env("CORTEX_NUM_THREADS", fallback, 1024);
}

inline long current_pid() {
#ifdef CORTEX_HAVE_GETPID
  return static_cast<long>(::getpid());
#else
  return 0;
#endif
}

}  // namespace parallel_detail

// This thread's index among a region's participants: w + 1 for the pool's worker w, 0 for any other thread (the
// one that runs parallel_for). Stable from region to region, so work a thread takes by this index finds its data in
// that core's caches again (see run_affine).
inline int& participant_index() {
  static thread_local int index = 0;
  return index;
}

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t i);

  // The process-wide (per shared library) pool. Threads are not started until needed.
  static ThreadPool& instance() {
    static ThreadPool pool(parallel_detail::default_num_threads());
    return pool;
  }

  explicit ThreadPool(int num_threads)
      : num_threads_(num_threads < 1 ? 1 : num_threads),
        spin_us_(parallel_detail::parse_positive_env("CORTEX_SPIN_US", 300, 100000)) {}

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() { shutdown(); }

  // Threads used by a region, calling thread included.
  int num_threads() const { return num_threads_; }

  // Runs f(i) for i in [0, n); returns when all calls are done.
  template <class F>
  void parallel_for(int64_t n, F&& f) {
    if (n <= 0) return;
    using Fn = typename std::remove_reference<F>::type;
    if (n == 1 || num_threads_ == 1) {
      for (int64_t i = 0; i < n; ++i) f(i);
      return;
    }
    auto serial = [&] {
      for (int64_t i = 0; i < n; ++i) f(i);
    };
    if (n > kMaxRegion) {  // very large n: hand out contiguous ranges instead of single indices
      const int64_t chunks = int64_t{64} * num_threads_;
      auto ranges = [&](int64_t c) {
        const int64_t b = n / chunks * c + std::min(c, n % chunks);
        const int64_t e = b + n / chunks + (c < n % chunks ? 1 : 0);
        for (int64_t i = b; i < e; ++i) f(i);
      };
      run(chunks, &trampoline<decltype(ranges)>, static_cast<void*>(&ranges), serial);
      return;
    }
    Fn* fp = &f;
    run(n, &trampoline<Fn>, const_cast<void*>(static_cast<const void*>(fp)), serial);
  }

 private:
  template <class Fn>
  static void trampoline(void* ctx, int64_t i) {
    (*static_cast<Fn*>(ctx))(i);
  }

  static constexpr uint64_t kIndexMask = 0xffffffffull;
  static constexpr int64_t kMaxRegion = int64_t{1} << 30;  // larger n is split into ranges

  // Claims indices of region `tag` until none is left or the region is no longer `tag`.
  // Why fn/ctx/n are the region's own values when a claim succeeds: a new region first closes the
  // old one (new tag, index "closed") and only then rewrites the fields (release). If any field
  // read below (acquire) returns a newer region's value, the close is visible to us and the CAS,
  // which checks the tag, fails. If all are the old region's, a claim of index < n means that
  // region is still running.
  void participate(uint64_t tag) noexcept {
    const TaskFn fn = fn_.load(std::memory_order_acquire);
    void* const ctx = ctx_.load(std::memory_order_acquire);
    const int64_t n = n_.load(std::memory_order_acquire);
    uint64_t w = work_.load(std::memory_order_relaxed);
    for (;;) {
      if ((w >> 32) != tag) return;
      const int64_t i = static_cast<int64_t>(w & kIndexMask);
      if (i >= n) return;
      if (!work_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_relaxed)) continue;
      if (!cancel_.load(std::memory_order_relaxed)) {
        try {
          fn(ctx, i);
        } catch (...) {
          std::lock_guard<std::mutex> lk(error_mu_);
          if (!error_) error_ = std::current_exception();
          cancel_.store(true, std::memory_order_relaxed);
        }
      }
      done_.fetch_add(1, std::memory_order_release);
      w = work_.load(std::memory_order_relaxed);
    }
  }

  template <class Inline>
  void run(int64_t n, TaskFn fn, void* ctx, Inline&& run_inline) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      run_inline();  // nested call or another thread is using the pool
      return;
    }
    struct Release {
      std::atomic<bool>& b;
      ~Release() { b.store(false, std::memory_order_release); }
    } release{busy_};

    if (!started_) start_workers();
    if (forked_child_ || parallel_detail::current_pid() != owner_pid_) {
      forked_child_ = true;
      run_inline();
      return;
    }
    if (threads_.empty() || n > kMaxRegion) {
      run_inline();
      return;
    }
    const uint64_t cur = work_.load(std::memory_order_relaxed) >> 32;
    // Close the previous region under a fresh tag before touching the fields (see participate).
    work_.store(((cur + 1) << 32) | kIndexMask, std::memory_order_release);
    const uint64_t tag = cur + 2;
    fn_.store(fn, std::memory_order_release);
    ctx_.store(ctx, std::memory_order_release);
    n_.store(n, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    cancel_.store(false, std::memory_order_relaxed);
    // Publish (seq_cst pairs with the sleepers_ increment of a worker going to sleep).
    work_.store(tag << 32, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    participate(tag);
    // Every index is claimed; wait for the claimed ones still running elsewhere. A worker that
    // has not woken up yet is not waited for: it will find the region finished.
    int spins = 0;
    while (done_.load(std::memory_order_acquire) != n) {
      if (++spins < 4096) {
        CORTEX_CPU_RELAX();
      } else {
        std::this_thread::yield();
      }
    }
    if (cancel_.load(std::memory_order_relaxed)) {
      std::exception_ptr e;
      {
        std::lock_guard<std::mutex> lk(error_mu_);
        e = error_;
        error_ = nullptr;
      }
      if (e) std::rethrow_exception(e);
    }
  }

  void start_workers() {
    started_ = true;
    owner_pid_ = parallel_detail::current_pid();
    const int workers = num_threads_ - 1;
    threads_.reserve(static_cast<size_t>(workers));
    // No region is published while we hold busy_, so this is the tag workers start from.
    const uint64_t start_tag = work_.load(std::memory_order_relaxed) >> 32;
    for (int w = 0; w < workers; ++w) {
      try {
        threads_.emplace_back([this, start_tag, w] {
          participant_index() = w + 1;
          worker_main(start_tag);
        });
      } catch (...) {
        break;  // could not create more threads: run with what we have
      }
    }
  }

  void worker_main(uint64_t seen) noexcept {
    for (;;) {
      // Spin a little, then block.
      uint64_t tag = work_.load(std::memory_order_acquire) >> 32;
      if (tag == seen) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto budget = std::chrono::microseconds(spin_us_);
        int k = 0;
        for (;;) {
          CORTEX_CPU_RELAX();
          tag = work_.load(std::memory_order_acquire) >> 32;
          if (tag != seen) break;
          if ((++k & 63) == 0 && std::chrono::steady_clock::now() - t0 > budget) break;
        }
      }
      if (tag == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        while ((tag = work_.load(std::memory_order_seq_cst) >> 32) == seen) cv_.wait(lk);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
      seen = tag;
      if (stop_.load(std::memory_order_acquire)) return;
      participate(tag);
    }
  }

  void shutdown() noexcept {
    if (threads_.empty()) return;
    if (forked_child_ || parallel_detail::current_pid() != owner_pid_) {
      // The workers do not exist in this process: never join them. Leak the handles on purpose
      // (destroying a joinable std::thread would call std::terminate).
      new std::vector<std::thread>(std::move(threads_));
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true, std::memory_order_seq_cst);
      work_.store((((work_.load(std::memory_order_relaxed) >> 32) + 1) << 32) | kIndexMask,
                  std::memory_order_seq_cst);
      cv_.notify_all();
    }
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }

  const int num_threads_;
  const int spin_us_;

  // Owned by whoever holds busy_.
  std::atomic<bool> busy_{false};
  bool started_ = false;
  bool forked_child_ = false;
  long owner_pid_ = 0;
  std::vector<std::thread> threads_;

  // The current region: fields written before work_ gets the region's tag.
  std::atomic<TaskFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<bool> cancel_{false};
  alignas(64) std::atomic<uint64_t> work_{0};  // (region tag << 32) | next index
  alignas(64) std::atomic<int64_t> done_{0};   // indices finished in the current region
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::mutex error_mu_;
  std::exception_ptr error_;
};

// Runs f(i) for i in [0, n) across the pool (calling thread included); returns when all are done.
template <class F>
inline void parallel_for(int64_t n, F&& f) {
  if (n <= 0) return;
  if (n == 1) {
    f(int64_t{0});
    return;
  }
  ThreadPool::instance().parallel_for(n, std::forward<F>(f));
}

// Inside a SerialScope this thread's work runs on it alone: num_threads() says 1, so the helpers that split work
// (fused_tasks, for_rows, copy_table) keep it whole. A kernel's lanes run in one region, one lane a thread, each
// in such a scope (splitting a lane's level further would only run its pieces one after another).
inline int& serial_depth() {
  static thread_local int depth = 0;
  return depth;
}

struct SerialScope {
  SerialScope() { ++serial_depth(); }
  ~SerialScope() { --serial_depth(); }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;
};

// Threads a region uses (calling thread included); 1 inside a SerialScope.
inline int num_threads() { return serial_depth() ? 1 : ThreadPool::instance().num_threads(); }

// Runs f(t) for t in [0, tasks) across the pool, each participant first taking the tasks of its own share
// (participant_index() p of T threads: tasks [p*tasks/T, (p+1)*tasks/T)), then any left, from the last one back.
// A thread that handles the same part of the data in every call (a slice of a weight matrix) finds it in its own
// L2; with plain parallel_for whichever thread claims first takes a task. A late or busy thread costs nothing:
// the others take its share. At most kMaxAffineTasks tasks.
constexpr int64_t kMaxAffineTasks = 4096;

template <class F>
inline void run_affine(int64_t tasks, F&& f) {
  const int64_t T = std::min<int64_t>(num_threads(), tasks);
  if (T <= 1 || tasks > kMaxAffineTasks) {
    parallel_for(tasks, f);
    return;
  }
  std::atomic<uint8_t> taken[kMaxAffineTasks];
  for (int64_t t = 0; t < tasks; ++t) taken[t].store(0, std::memory_order_relaxed);
  parallel_for(T, [&](int64_t) {
    const int64_t p = participant_index() % T;
    for (int64_t t = p * tasks / T; t < (p + 1) * tasks / T; ++t)
      if (!taken[t].exchange(1, std::memory_order_relaxed)) f(t);
    for (int64_t t = tasks - 1; t >= 0; --t)
      if (!taken[t].exchange(1, std::memory_order_relaxed)) f(t);
  });
}

}  // namespace cortex
