// Everything written so far to a stdio stream (e.g. a std::tmpfile()), for tests of code that
// prints to a FILE*.
#pragma once

#include <cstdio>
#include <string>

namespace dino::testing {

inline std::string Contents(std::FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buffer[4096];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, got);
  return text;
}

}  // namespace dino::testing
