// Request bodies of the HTTP fronts through the project's own JSON parser
// (server/frontend/json_reader: from_chars numbers, bounded nesting), checked against
// nlohmann's parser: a document ParseJson accepts must be one nlohmann accepts with the same
// value, and ParseJson must read its own serialization back to that value.
#include <cstdint>
#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"
#include "fuzz/require.h"
#include "server/frontend/json_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = dino::frontend::ParseJson(text, /*max_depth=*/64);
  if (!parsed.ok()) return 0;
  const nlohmann::json reference =
      nlohmann::json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  Require(!reference.is_discarded(), "ParseJson accepts a document nlohmann refuses");
  Require(reference == *parsed, "ParseJson and nlohmann read different values: " + parsed->dump() +
                                    " vs " + reference.dump());
  auto again = dino::frontend::ParseJson(parsed->dump(), /*max_depth=*/64);
  Require(again.ok() && *again == *parsed, "ParseJson does not read its own dump back");
  return 0;
}
