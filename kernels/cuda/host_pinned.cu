#include "kernels/cuda/host_pinned.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_runtime.h"

namespace moekit::cuda {

namespace {

// Pinned buffers are allocated on demand up to kPinnedPoolBytes and kept for reuse.
class PinnedPool {
 public:
  void* acquire() {
    std::unique_lock<std::mutex> g(lock_);
    for (;;) {
      if (!free_.empty()) {
        void* p = free_.back();
        free_.pop_back();
        return p;
      }
      if ((allocated_ + 1) * kPinnedBufferBytes <= kPinnedPoolBytes) {
        void* p = nullptr;
        MOEKIT_CUDA_CHECK(cudaHostAlloc(&p, static_cast<size_t>(kPinnedBufferBytes), cudaHostAllocPortable));
        ++allocated_;
        return p;
      }
      available_.wait(g);
    }
  }
  void release(void* p) {
    {
      std::lock_guard<std::mutex> g(lock_);
      free_.push_back(p);
    }
    available_.notify_one();
  }
  int64_t bytes() {
    std::lock_guard<std::mutex> g(lock_);
    return allocated_ * kPinnedBufferBytes;
  }

 private:
  std::mutex lock_;
  std::condition_variable available_;
  std::vector<void*> free_;
  int64_t allocated_ = 0;
};

PinnedPool& pool() {
  static PinnedPool* p = new PinnedPool();  // never destroyed: buffers live until exit
  return *p;
}

// Two buffers and their events for one staged copy; returned to the pool when done.
struct Staging {
  void* buf[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};
  bool pending[2] = {false, false};
  cudaStream_t stream = nullptr;
  bool queued = false;  // a copy was queued: on an error path its event may be missing
  ~Staging() {
    if (queued) cudaStreamSynchronize(stream);  // no DMA may still read a buffer handed back
    for (int i = 0; i < 2; ++i) {
      if (pending[i]) cudaEventSynchronize(done[i]);  // never hand back a buffer a copy still reads
      if (done[i] != nullptr) cudaEventDestroy(done[i]);
      if (buf[i] != nullptr) pool().release(buf[i]);
    }
  }
};

}  // namespace

void staged_host_to_device(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream());
  Staging s;
  s.stream = stream;
  const int n = bytes > kPinnedBufferBytes ? 2 : 1;
  for (int i = 0; i < n; ++i) {
    s.buf[i] = pool().acquire();
    MOEKIT_CUDA_CHECK(cudaEventCreateWithFlags(&s.done[i], cudaEventDisableTiming));
  }
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  int64_t done = 0;
  for (int64_t chunk = 0; done < bytes; ++chunk) {
    const int b = static_cast<int>(chunk % n);
    const int64_t m = std::min(kPinnedBufferBytes, bytes - done);
    // NOTE: the memcpy into one buffer overlaps the DMA out of the other.
    if (s.pending[b]) {
      MOEKIT_CUDA_CHECK(cudaEventSynchronize(s.done[b]));
      s.pending[b] = false;
    }
    std::memcpy(s.buf[b], from + done, static_cast<size_t>(m));
    s.queued = true;
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(to + done, s.buf[b], static_cast<size_t>(m), cudaMemcpyHostToDevice, stream));
    MOEKIT_CUDA_CHECK(cudaEventRecord(s.done[b], stream));
    s.pending[b] = true;
    done += m;
  }
  for (int i = 0; i < n; ++i) {
    if (s.pending[i]) MOEKIT_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
    s.pending[i] = false;
  }
  s.queued = false;
}

void device_to_device_async(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice,
                                    static_cast<cudaStream_t>(current_stream())));
}

int64_t pinned_pool_bytes() { return pool().bytes(); }

}  // namespace moekit::cuda
