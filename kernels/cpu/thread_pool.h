// The CPU backend's worker threads. parallel_for splits [0, n) into chunks of at
// least `grain` items and runs them on every core (the calling thread included).
// Callers from different threads are served one at a time, so each op gets all cores.
#pragma once

#include <cstdint>
#include <functional>

namespace moekit::cpu {

// Number of threads parallel_for uses (MOEKIT_NUM_THREADS, else the core count).
int num_threads();

// fn(begin, end) is called for disjoint ranges covering [0, n). The first exception
// thrown by any chunk is rethrown on the calling thread after all chunks finish.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace moekit::cpu
