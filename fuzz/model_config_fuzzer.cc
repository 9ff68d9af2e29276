// A model's config.json (version policy, default version, labels, batching, executors) through
// ParseModelConfig. What it accepts must serialize and parse back to an equal config.
#include <cstdint>
#include <string>

#include "fuzz/require.h"
#include "server/core/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = dino::serving::ParseModelConfig(text, "config.json");
  if (!config.ok()) return 0;
  Require(dino::serving::ValidateModelConfig(*config, "config.json").ok(),
          "ValidateModelConfig refuses a config ParseModelConfig accepted");
  const std::string serialized = dino::serving::SerializeModelConfig(*config);
  auto again = dino::serving::ParseModelConfig(serialized, "again.json");
  Require(again.ok(), "ParseModelConfig refuses what SerializeModelConfig wrote: " + serialized);
  Require(*again == *config, "a config.json round trip changed the config: " + serialized);
  return 0;
}
