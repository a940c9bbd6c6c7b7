// One error type for the whole kernels core. The binding (native/) catches
// moekit::Error and throws it to JavaScript as a MoekitError with the same code.
// Nothing in kernels/ calls exit() or abort(): every failure is an Error.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace moekit {

// Error codes shared with lib/errors.ts (keep the two lists in step).
namespace code {
inline constexpr const char* kInvalidArgument = "ERR_INVALID_ARGUMENT";
inline constexpr const char* kOutOfMemory = "ERR_OOM";
inline constexpr const char* kCudaOutOfMemory = "ERR_CUDA_OOM";
inline constexpr const char* kCuda = "ERR_CUDA";
inline constexpr const char* kCudaUnavailable = "ERR_CUDA_UNAVAILABLE";
inline constexpr const char* kDisposed = "ERR_DISPOSED";
inline constexpr const char* kUnsupported = "ERR_UNSUPPORTED";
inline constexpr const char* kInternal = "ERR_INTERNAL";
inline constexpr const char* kIo = "ERR_IO";
inline constexpr const char* kCheckpoint = "ERR_CHECKPOINT";
}  // namespace code

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message, std::string cuda_error = "")
      : std::runtime_error(message), code_(std::move(code)), cuda_error_(std::move(cuda_error)) {}
  const std::string& code() const { return code_; }
  // CUDA error name (for example "cudaErrorMemoryAllocation"), empty otherwise.
  const std::string& cuda_error() const { return cuda_error_; }

 private:
  std::string code_;
  std::string cuda_error_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from its parts: MOEKIT_FAIL(code::kInvalidArgument, "k must be <= ", E).
template <typename... Parts>
[[noreturn]] void fail(const char* error_code, const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(error_code, os.str());
}

// Checks an invariant that the TypeScript layer has already validated; a failure
// here is a bug in moekit, reported as ERR_INTERNAL rather than a crash.
#define MOEKIT_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) ::moekit::fail(::moekit::code::kInternal, __FILE__, ":", __LINE__, ": ", \
                                "check failed: " #cond ": ", __VA_ARGS__);               \
  } while (0)

// Validates an argument in the kernels core (second line of defence after lib/).
#define MOEKIT_REQUIRE(cond, ...)                                          \
  do {                                                                     \
    if (!(cond)) ::moekit::fail(::moekit::code::kInvalidArgument, __VA_ARGS__); \
  } while (0)

}  // namespace moekit
