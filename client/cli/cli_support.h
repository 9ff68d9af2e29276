// Input parsing and output formatting shared by the `dino` CLI subcommands; separate from
// main.cc so that the unit tests can exercise it without a server.
#ifndef DINO_CLIENT_CLI_CLI_SUPPORT_H_
#define DINO_CLIENT_CLI_CLI_SUPPORT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/io/npy.h"

namespace dino::cli {

// Reads an array given on the command line as
//   * inline JSON: a list nest such as "[0.1, 0.2]" or a single number (a lone number becomes
//     shape [1], a one-element vector);
//   * PATH.npy;
//   * PATH.npz:NAME, or PATH.npz when the archive holds exactly one array;
//   * PATH.json, a file holding such a JSON list.
// Integer arrays are converted to float64 (the wire carries only FP32/FP64); float arrays are
// kept as they are. Errors are prefixed by `flag` (e.g. "--m").
absl::StatusOr<NpyArray> LoadArrayArgument(absl::string_view value, absl::string_view flag);

// Statistics printed in place of an array too large to print.
struct ArraySummary {
  int64_t count = 0;
  int64_t non_finite = 0;  // NaN and +-Inf elements, excluded from the statistics below.
  double min = 0, max = 0, mean = 0, l2_norm = 0;
};
ArraySummary Summarize(const NpyArray& array);

// The JSON object describing one result array:
//   {"shape": [..], "dtype": "fp32"|"fp64", "data": <nested lists>}
// when it has at most `max_print` elements and `file` is empty, else
//   {"shape": [..], "dtype": .., "file": <file, if saved>, "summary": {"min": .., "max": ..,
//    "mean": .., "l2_norm": .., "non_finite": ..}}.
std::string ArrayJson(const NpyArray& array, int64_t max_print, absl::string_view file);

// A JSON string literal for `s` (quoted and escaped).
std::string JsonString(absl::string_view s);

// Saves results for --out: to PATH.npz all `arrays` (by name); to PATH.npy only the first
// (the primary result). InvalidArgument for any other extension.
absl::Status SaveArrays(const std::string& path,
                        const std::vector<std::pair<std::string, const NpyArray*>>& arrays);

// "INVALID_ARGUMENT: m: expected ..."; how failures are shown to the user.
std::string StatusText(const absl::Status& status);

// Ends with `suffix`, compared case-sensitively.
bool EndsWith(absl::string_view s, absl::string_view suffix);

}  // namespace dino::cli

#endif  // DINO_CLIENT_CLI_CLI_SUPPORT_H_
