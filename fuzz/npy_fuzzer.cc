// .npy bytes (what the data pipeline, the client and the CLI read) through DecodeNpy. What it
// accepts must satisfy NpyArray's invariant, encode with EncodeNpy and decode back equal.
#include <cstdint>

#include "absl/strings/string_view.h"
#include "fuzz/require.h"
#include "models/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  auto array =
      dino::DecodeNpy(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz.npy");
  if (!array.ok()) return 0;
  auto again = dino::DecodeNpy(dino::EncodeNpy(*array), "again.npy");
  Require(again.ok(), "DecodeNpy refuses what EncodeNpy wrote of an array it decoded");
  Require(*again == *array, "an .npy round trip changed the array");
  return 0;
}
