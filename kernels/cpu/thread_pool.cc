#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace moekit::cpu {

namespace {

// True on a thread that is running a parallel_for chunk: nested calls run inline.
thread_local bool tls_inside_pool = false;

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int threads() const { return threads_; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    const int64_t max_chunks = (n + grain - 1) / grain;
    // NOTE: a few chunks per thread balance uneven work (skewed expert loads).
    const int64_t chunks = std::min<int64_t>(max_chunks, static_cast<int64_t>(threads_) * 4);
    if (chunks <= 1 || threads_ == 1 || tls_inside_pool) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(submit_mu_);
    Job job;
    job.fn = &fn;
    job.n = n;
    job.chunks = chunks;
    {
      std::lock_guard<std::mutex> g(mu_);
      job_ = &job;
      ++generation_;
    }
    cv_.notify_all();
    work(job);
    {
      std::unique_lock<std::mutex> g(mu_);
      done_cv_.wait(g, [&] { return job.active == 0; });
      job_ = nullptr;
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t chunks = 0;
    std::atomic<int64_t> next{0};
    int active = 0;  // workers inside work(), guarded by mu_
    std::mutex error_mu;
    std::exception_ptr error;
  };

  static void work(Job& job) {
    tls_inside_pool = true;
    struct Leave {
      ~Leave() { tls_inside_pool = false; }
    } leave;
    for (;;) {
      const int64_t c = job.next.fetch_add(1);
      if (c >= job.chunks) return;
      const int64_t begin = job.n * c / job.chunks;
      const int64_t end = job.n * (c + 1) / job.chunks;
      try {
        (*job.fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> g(job.error_mu);
        if (!job.error) job.error = std::current_exception();
      }
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
        if (stop_) return;
        seen = generation_;
        job = job_;
        ++job->active;
      }
      work(*job);
      {
        std::lock_guard<std::mutex> g(mu_);
        --job->active;
      }
      done_cv_.notify_all();
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex submit_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int configured_threads() {
  if (const char* env = std::getenv("MOEKIT_NUM_THREADS")) {
    const int v = std::atoi(env);
    if (v > 0) return std::min(v, 1024);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

Pool& pool() {
  // NOTE: leaked on purpose: joining threads from a static destructor at process exit
  // can deadlock inside Node's shutdown; the OS reclaims them.
  static Pool* p = new Pool(configured_threads());
  return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace moekit::cpu
