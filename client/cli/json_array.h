// JSON text <-> NpyArray for the CLI: small vectors and matrices typed inline
// (`--m '[0.1, 0.2]'`) and arrays printed as nested lists.
#ifndef DINO_CLIENT_CLI_JSON_ARRAY_H_
#define DINO_CLIENT_CLI_JSON_ARRAY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/io/npy.h"

namespace dino::cli {

// Parses a JSON number or a rectangular nest of lists of numbers into a float64 array whose
// shape is the nesting: "[1, 2]" -> [2], "[[1, 2], [3, 4], [5, 6]]" -> [3, 2], "2.5" -> [] and
// "[]" -> [0]. InvalidArgument, giving the position, for malformed JSON, a non-number
// element (the message gives its index path, e.g. "[1][0]") or ragged lists.
absl::StatusOr<NpyArray> ParseJsonArray(absl::string_view text);

// Appends `array` as nested JSON lists (a bare number for rank 0). Elements are written in
// the shortest form that reads back to the same value of the array's dtype (so float32 0.1
// prints as 0.1, not 0.10000000149011612); NaN and infinities, which JSON cannot express,
// are written as null. A dimension of 0 prints as [] (the shape is reported separately).
void AppendJsonArray(const NpyArray& array, std::string* out);
std::string FormatJsonArray(const NpyArray& array);

}  // namespace dino::cli

#endif  // DINO_CLIENT_CLI_JSON_ARRAY_H_
