// Reading byte ranges of files into memory the kernels core owns. Checkpoint shards
// can be far larger than a JavaScript ArrayBuffer, so tensor data never passes
// through JavaScript: it is read here, straight into a Storage.
#pragma once

#include <cstdint>
#include <string>

namespace moekit {

// Size of a regular file in bytes; ERR_IO naming the file when it cannot be opened.
int64_t file_size(const std::string& path);

// Reads bytes [offset, offset + bytes) of `path` into dst. ERR_CHECKPOINT when the file
// is shorter than the range (truncated), ERR_IO on any other failure. Any alignment.
void read_file_range(const std::string& path, int64_t offset, int64_t bytes, void* dst);

}  // namespace moekit
