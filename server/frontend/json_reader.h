// A strict JSON (RFC 8259) parser into nlohmann::json whose numbers are read with
// std::from_chars. Request bodies of the HTTP frontends are mostly long lists of numbers
// (4225 of them for one point of the bundled model), where nlohmann's own parser, which reads
// numbers with strtod, took ~1 ms of a ~1.8 ms UM-Bridge Evaluate; from_chars reads them ~10×
// faster. Everything else about the document (objects, strings with escapes, nesting) is
// parsed here too, so that one pass builds the value.
#pragma once

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dino::frontend {

// The JSON value of `text`, or INVALID_ARGUMENT naming the byte offset and what was expected
// there. Integers that fit int64 become integers, other numbers doubles; a number beyond
// double's range is an error. Nesting deeper than `max_depth` is refused (no recursion
// without bound on hostile input). Duplicate object keys: the last wins.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, int max_depth = 64);

}  // namespace dino::frontend
