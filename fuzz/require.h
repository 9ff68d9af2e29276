// The properties the fuzz targets check beyond "no crash" (round trips, answers' shapes): a
// violated one aborts the process, which libFuzzer reports as a finding with its input.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace dino::fuzz {

inline void Require(bool condition, const std::string& what) {
  if (condition) return;
  std::fprintf(stderr, "fuzz property violated: %s\n", what.c_str());
  std::abort();
}

}  // namespace dino::fuzz
