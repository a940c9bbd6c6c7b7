// Reading byte ranges of files into memory the kernels core owns. Checkpoint shards
// can be far larger than a JavaScript ArrayBuffer, so tensor data never passes
// through JavaScript: it is read here, straight into a Storage. Expert offload maps
// the shards read-only (MappedFile) and copies expert byte ranges into device slots
// (copy_ranges).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/storage.h"

namespace moekit {

// Size of a regular file in bytes; ERR_IO naming the file when it cannot be opened.
int64_t file_size(const std::string& path);

// Reads bytes [offset, offset + bytes) of `path` into dst. ERR_CHECKPOINT when the file
// is shorter than the range (truncated), ERR_IO on any other failure. Any alignment.
void read_file_range(const std::string& path, int64_t offset, int64_t bytes, void* dst);

// A whole regular file mapped read-only into host memory (mmap, MAP_PRIVATE). The
// mapping lives as long as the object; hold it by shared_ptr so copies in flight keep
// it alive after the owner lets go. Pages are read from the file on first touch.
class MappedFile {
 public:
  // ERR_IO naming the file when it cannot be opened, is not a regular file, or mmap fails.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const char* data() const { return data_; }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const char* data_ = nullptr;  // null for an empty file
  int64_t size_ = 0;
};

// One byte range to copy: src is host memory (a mapping or a host tensor) when
// src_on_host, else memory on the destination's device.
struct RangeCopy {
  void* dst = nullptr;
  const void* src = nullptr;
  int64_t bytes = 0;
  bool src_on_host = true;
};

// Copies every range onto `dst_device` (the host, or a CUDA device: host sources go
// through the bounded pool of pinned staging buffers of kernels/cuda/host_pinned.h).
// Complete on return. Returns the copy's time in ms (on a GPU without the wait for the
// device's copy lock).
double copy_ranges(Device dst_device, const std::vector<RangeCopy>& ranges);

}  // namespace moekit
