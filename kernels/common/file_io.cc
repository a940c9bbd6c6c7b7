#include "kernels/common/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "kernels/common/error.h"
#if defined(MOEKIT_WITH_CUDA)
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/host_pinned.h"
#endif

namespace moekit {

namespace {

class Fd {
 public:
  explicit Fd(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) fail(code::kIo, "cannot open ", path, ": ", std::strerror(errno));
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

int64_t file_size(const std::string& path) {
  Fd fd(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(code::kIo, "cannot stat ", path, ": ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(code::kIo, path, " is not a regular file");
  return static_cast<int64_t>(st.st_size);
}

void read_file_range(const std::string& path, int64_t offset, int64_t bytes, void* dst) {
  MOEKIT_REQUIRE(offset >= 0 && bytes >= 0, "read_file_range: negative offset or size");
  if (bytes == 0) return;
  Fd fd(path);
  char* out = static_cast<char*>(dst);
  int64_t done = 0;
  while (done < bytes) {
    // NOTE: pread in chunks of at most 1 GiB (Linux caps one read near 2 GiB).
    const size_t want = static_cast<size_t>(std::min<int64_t>(bytes - done, int64_t{1} << 30));
    const ssize_t got = ::pread(fd.get(), out + done, want, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      fail(code::kIo, "cannot read ", path, " at byte ", offset + done, ": ", std::strerror(errno));
    }
    if (got == 0)
      fail(code::kCheckpoint, path, " ends at byte ", offset + done, " but ", bytes - done,
           " more bytes were expected (truncated file?)");
    done += got;
  }
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  Fd fd(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(code::kIo, "cannot stat ", path, ": ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(code::kIo, path, " is not a regular file");
  size_ = static_cast<int64_t>(st.st_size);
  if (size_ == 0) return;
  void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (p == MAP_FAILED) fail(code::kIo, "cannot map ", path, " (", size_, " bytes): ", std::strerror(errno));
  data_ = static_cast<const char*>(p);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<char*>(data_), static_cast<size_t>(size_));
}

double copy_ranges(Device dst_device, const std::vector<RangeCopy>& ranges) {
  for (const RangeCopy& r : ranges) MOEKIT_REQUIRE(r.bytes >= 0, "copy_ranges: negative size");
  if (dst_device.is_cpu()) {
    for (const RangeCopy& r : ranges) MOEKIT_REQUIRE(r.src_on_host, "copy_ranges: a host destination needs a host source");
    const auto start = std::chrono::steady_clock::now();
    for (const RangeCopy& r : ranges)
      if (r.bytes > 0) std::memcpy(r.dst, r.src, static_cast<size_t>(r.bytes));
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
#if defined(MOEKIT_WITH_CUDA)
  // On the device's copy stream, beside (not behind) its compute work: a forward computes
  // while the experts it does not need yet arrive. The caller orders reads of the
  // destination after this call returns (the copy stream is synchronised by then).
  return cuda::run_copy_on_device(dst_device.index, [&] {
    for (const RangeCopy& r : ranges) {
      if (r.bytes == 0) continue;
      if (r.src_on_host)
        cuda::staged_host_to_device(r.dst, r.src, r.bytes);
      else
        cuda::device_to_device_async(r.dst, r.src, r.bytes);
    }
  });
#else
  fail(code::kCudaUnavailable, "copy_ranges: this binary was built without the CUDA backend");
#endif
}

}  // namespace moekit
