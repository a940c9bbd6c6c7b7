// Environment variables with a fixed set of values (the CUDA opt-ins). lib/env.ts refuses
// any value outside these sets before the addon loads; this reader needs no error path.
#pragma once

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace moekit {

// The index of the variable's value in `choices`; 0 (choices' first, the default) when it
// is unset, empty or not among them. Callers read it once per process.
inline int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  if (v == nullptr) return 0;
  int i = 0;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    ++i;
  }
  return 0;
}

}  // namespace moekit
