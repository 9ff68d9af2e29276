#include "server/core/model_config.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "models/io/file_util.h"

namespace dino::serving {
namespace {

using nlohmann::json;

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
// More compute threads than this for one model is a typo, not a configuration.
constexpr int64_t kMaxExecutors = 1024;

absl::Status FieldError(const std::string& path, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", field, " ", what));
}

// A short rendering of a JSON value for error messages.
std::string Shown(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

absl::StatusOr<int64_t> ReadInteger(const json& value, const std::string& path,
                                    absl::string_view field, int64_t min, int64_t max = kMaxInt) {
  if (!value.is_number_integer()) {
    return FieldError(path, field, absl::StrCat("must be an integer, got ", Shown(value)));
  }
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(kMaxInt)) {
    return FieldError(path, field, absl::StrCat("must be <= ", max, ", got ", Shown(value)));
  }
  const int64_t number = value.get<int64_t>();
  if (number < min)
    return FieldError(path, field, absl::StrCat("must be >= ", min, ", got ", number));
  if (number > max)
    return FieldError(path, field, absl::StrCat("must be <= ", max, ", got ", number));
  return number;
}

// Refuses keys of `object` that are not in `known`, naming the first unknown one.
absl::Status CheckKnownKeys(const json& object, const std::string& path, absl::string_view where,
                            std::initializer_list<absl::string_view> known) {
  for (const auto& [key, unused] : object.items()) {
    bool found = false;
    for (absl::string_view name : known) found = found || key == name;
    if (!found) {
      const std::string field = where.empty() ? key : absl::StrCat(where, ".", key);
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": unknown field '", field, "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::set<int64_t>> ReadVersionList(const json& value, const std::string& path,
                                                  absl::string_view field) {
  if (!value.is_array()) {
    return FieldError(path, field,
                      absl::StrCat("must be an array of versions, got ", Shown(value)));
  }
  std::set<int64_t> versions;
  for (size_t i = 0; i < value.size(); ++i) {
    auto version = ReadInteger(value[i], path, absl::StrCat(field, "[", i, "]"), 1);
    if (!version.ok()) return version.status();
    if (!versions.insert(*version).second) {
      return FieldError(path, field, absl::StrCat("lists version ", *version, " twice"));
    }
  }
  return versions;
}

absl::StatusOr<VersionPolicy> ReadVersionPolicy(const json& value, const std::string& path) {
  constexpr absl::string_view kField = "version_policy";
  if (!value.is_object() || value.size() != 1) {
    return FieldError(path, kField,
                      absl::StrCat("must be an object with exactly one of \"latest\", \"all\", "
                                   "\"specific\", got ",
                                   Shown(value)));
  }
  if (absl::Status s = CheckKnownKeys(value, path, kField, {"latest", "all", "specific"});
      !s.ok()) {
    return s;
  }
  VersionPolicy policy;
  if (value.contains("latest")) {
    auto latest = ReadInteger(value["latest"], path, "version_policy.latest", 1);
    if (!latest.ok()) return latest.status();
    policy.kind = VersionPolicy::Kind::kLatest;
    policy.latest = *latest;
  } else if (value.contains("all")) {
    const json& all = value["all"];
    if (!all.is_object() || !all.empty()) {
      return FieldError(path, "version_policy.all", absl::StrCat("must be {}, got ", Shown(all)));
    }
    policy.kind = VersionPolicy::Kind::kAll;
  } else {
    auto specific = ReadVersionList(value["specific"], path, "version_policy.specific");
    if (!specific.ok()) return specific.status();
    policy.kind = VersionPolicy::Kind::kSpecific;
    policy.specific = *std::move(specific);
  }
  return policy;
}

absl::StatusOr<BatchingConfig> ReadBatching(const json& value, const std::string& path,
                                            BatchingConfig batching,
                                            std::set<std::string>* explicit_knobs) {
  if (!value.is_object()) {
    return FieldError(path, "batching", absl::StrCat("must be an object, got ", Shown(value)));
  }
  if (absl::Status s = CheckKnownKeys(
          value, path, "batching",
          {"max_batch_size", "preferred_batch_size", "max_queue_delay_us", "max_queue_size"});
      !s.ok()) {
    return s;
  }
  struct Knob {
    const char* key;
    int64_t* target;
  };
  for (const Knob& knob : {Knob{"max_batch_size", &batching.max_batch_size},
                           Knob{"preferred_batch_size", &batching.preferred_batch_size},
                           Knob{"max_queue_delay_us", &batching.max_queue_delay_us},
                           Knob{"max_queue_size", &batching.max_queue_size}}) {
    if (!value.contains(knob.key)) continue;
    // Ranges are checked by ValidateModelConfig; here only the type.
    auto number = ReadInteger(value[knob.key], path, absl::StrCat("batching.", knob.key),
                              std::numeric_limits<int64_t>::min());
    if (!number.ok()) return number.status();
    *knob.target = *number;
    explicit_knobs->insert(absl::StrCat("batching.", knob.key));
  }
  return batching;
}

absl::Status FsyncFolder(const std::string& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", folder, " to fsync"));
  io_internal::ScopedFd scoped(fd);
  if (::fsync(fd) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fsync of ", folder));
  return scoped.Close(folder);
}

}  // namespace

std::string ModelConfigPath(const std::string& root, const std::string& name) {
  return (std::filesystem::path(root) / name / kModelConfigFileName).string();
}

bool IsValidVersionLabel(const std::string& label) {
  if (label.empty() || label.size() > 64) return false;
  const auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (!letter(label[0])) return false;
  for (char c : label) {
    if (!letter(c) && !(c >= '0' && c <= '9') && c != '_' && c != '-' && c != '.') return false;
  }
  return true;
}

std::string DescribeVersionPolicy(const VersionPolicy& policy) {
  switch (policy.kind) {
    case VersionPolicy::Kind::kLatest:
      return absl::StrCat("latest ", policy.latest);
    case VersionPolicy::Kind::kAll:
      return "all";
    case VersionPolicy::Kind::kSpecific:
      return absl::StrCat("specific [", absl::StrJoin(policy.specific, ", "), "]");
  }
  return "unknown";
}

absl::Status ValidateModelConfig(const ModelConfig& config, const std::string& path) {
  const VersionPolicy& policy = config.version_policy;
  if (policy.kind == VersionPolicy::Kind::kLatest && policy.latest < 1) {
    return FieldError(path, "version_policy.latest",
                      absl::StrCat("must be >= 1, got ", policy.latest));
  }
  if (policy.kind == VersionPolicy::Kind::kSpecific) {
    if (policy.specific.empty()) {
      return FieldError(path, "version_policy.specific",
                        "must list at least one version (pins and labels are kept anyway)");
    }
    if (*policy.specific.begin() < 1) {
      return FieldError(path, "version_policy.specific",
                        absl::StrCat("versions must be >= 1, got ", *policy.specific.begin()));
    }
  }
  if (config.default_version < 0) {
    return FieldError(path, "default_version",
                      absl::StrCat("must be >= 0 (0: the highest), got ", config.default_version));
  }
  for (const auto& [label, version] : config.labels) {
    if (!IsValidVersionLabel(label)) {
      return FieldError(path, absl::StrCat("labels.", label),
                        "is not a valid label (a letter, then letters, digits, '_', '-', '.'; "
                        "at most 64 characters)");
    }
    if (version < 1) {
      return FieldError(path, absl::StrCat("labels.", label),
                        absl::StrCat("must be a version >= 1, got ", version));
    }
    if (config.unloaded_versions.count(version) != 0) {
      return FieldError(path, absl::StrCat("labels.", label),
                        absl::StrCat("names version ", version,
                                     ", which unloaded_versions takes out of service"));
    }
  }
  if (!config.unloaded_versions.empty() && *config.unloaded_versions.begin() < 1) {
    return FieldError(
        path, "unloaded_versions",
        absl::StrCat("versions must be >= 1, got ", *config.unloaded_versions.begin()));
  }
  if (config.default_version != 0 && config.unloaded_versions.count(config.default_version) != 0) {
    return FieldError(path, "default_version",
                      absl::StrCat("is ", config.default_version,
                                   ", which unloaded_versions takes out of service"));
  }
  const BatchingConfig& batching = config.batching;
  if (batching.max_batch_size < 1) {
    return FieldError(path, "batching.max_batch_size",
                      absl::StrCat("must be >= 1, got ", batching.max_batch_size));
  }
  if (batching.preferred_batch_size < 0 ||
      batching.preferred_batch_size > batching.max_batch_size) {
    return FieldError(
        path, "batching.preferred_batch_size",
        absl::StrCat("must be in [0, batching.max_batch_size = ", batching.max_batch_size,
                     "], got ", batching.preferred_batch_size));
  }
  if (batching.max_queue_delay_us < 0) {
    return FieldError(path, "batching.max_queue_delay_us",
                      absl::StrCat("must be >= 0, got ", batching.max_queue_delay_us));
  }
  if (batching.max_queue_size < 1) {
    return FieldError(path, "batching.max_queue_size",
                      absl::StrCat("must be >= 1, got ", batching.max_queue_size));
  }
  if (config.executors < 0 || config.executors > kMaxExecutors) {
    return FieldError(path, "executors",
                      absl::StrCat("must be in [0, ", kMaxExecutors, "], got ", config.executors));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& text, const std::string& path,
                                             const ModelConfig& defaults) {
  json document;
  try {
    document = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!document.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must hold a JSON object, got ", Shown(document)));
  }
  if (absl::Status s = CheckKnownKeys(document, path, "",
                                      {"version_policy", "default_version", "labels", "batching",
                                       "executors", "unloaded_versions"});
      !s.ok()) {
    return s;
  }
  ModelConfig config;
  config.batching = defaults.batching;
  config.executors = defaults.executors;
  if (document.contains("version_policy")) {
    auto policy = ReadVersionPolicy(document["version_policy"], path);
    if (!policy.ok()) return policy.status();
    config.version_policy = *std::move(policy);
  }
  if (document.contains("default_version")) {
    auto version = ReadInteger(document["default_version"], path, "default_version", 0);
    if (!version.ok()) return version.status();
    config.default_version = *version;
  }
  if (document.contains("labels")) {
    const json& labels = document["labels"];
    if (!labels.is_object()) {
      return FieldError(path, "labels",
                        absl::StrCat("must be an object of label: version, got ", Shown(labels)));
    }
    for (const auto& [label, version] : labels.items()) {
      auto number = ReadInteger(version, path, absl::StrCat("labels.", label), 1);
      if (!number.ok()) return number.status();
      config.labels[label] = *number;
    }
  }
  if (document.contains("batching")) {
    auto batching =
        ReadBatching(document["batching"], path, config.batching, &config.explicit_knobs);
    if (!batching.ok()) return batching.status();
    config.batching = *batching;
  }
  if (document.contains("executors")) {
    auto executors = ReadInteger(document["executors"], path, "executors", 0, kMaxExecutors);
    if (!executors.ok()) return executors.status();
    config.executors = static_cast<int>(*executors);
    config.explicit_knobs.insert("executors");
  }
  if (document.contains("unloaded_versions")) {
    auto unloaded = ReadVersionList(document["unloaded_versions"], path, "unloaded_versions");
    if (!unloaded.ok()) return unloaded.status();
    config.unloaded_versions = *std::move(unloaded);
  }
  if (absl::Status s = ValidateModelConfig(config, path); !s.ok()) return s;
  return config;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path, const ModelConfig& defaults) {
  auto file = io_internal::OpenForRead(path);
  if (!file.ok()) {
    if (absl::IsNotFound(file.status())) {
      ModelConfig config;
      config.batching = defaults.batching;
      config.executors = defaults.executors;
      return config;
    }
    return file.status();
  }
  auto size = io_internal::FileSize(file->get(), path);
  if (!size.ok()) return size.status();
  constexpr uint64_t kMaxConfigBytes = 1 << 20;
  if (*size > kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", *size, " bytes; a model config is at most ", kMaxConfigBytes));
  }
  std::string text(*size, '\0');
  if (absl::Status s = io_internal::ReadAt(file->get(), 0, text.data(), text.size(), path);
      !s.ok()) {
    return s;
  }
  return ParseModelConfig(text, path, defaults);
}

std::string SerializeModelConfig(const ModelConfig& config) {
  json policy;
  switch (config.version_policy.kind) {
    case VersionPolicy::Kind::kLatest:
      policy["latest"] = config.version_policy.latest;
      break;
    case VersionPolicy::Kind::kAll:
      policy["all"] = json::object();
      break;
    case VersionPolicy::Kind::kSpecific:
      policy["specific"] = config.version_policy.specific;
      break;
  }
  json document = {{"version_policy", policy},
                   {"default_version", config.default_version},
                   {"labels", config.labels.empty() ? json::object() : json(config.labels)},
                   {"unloaded_versions", json(config.unloaded_versions)}};
  json batching = json::object();
  const std::pair<const char*, int64_t> knobs[] = {
      {"max_batch_size", config.batching.max_batch_size},
      {"preferred_batch_size", config.batching.preferred_batch_size},
      {"max_queue_delay_us", config.batching.max_queue_delay_us},
      {"max_queue_size", config.batching.max_queue_size}};
  for (const auto& [key, value] : knobs) {
    if (config.explicit_knobs.count(absl::StrCat("batching.", key)) != 0) batching[key] = value;
  }
  if (!batching.empty()) document["batching"] = batching;
  if (config.explicit_knobs.count("executors") != 0) document["executors"] = config.executors;
  return document.dump(2) + "\n";
}

absl::Status WriteModelConfig(const std::string& path, const ModelConfig& config) {
  if (absl::Status s = ValidateModelConfig(config, path); !s.ok()) return s;
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  // Hidden, and unique per process and call: concurrent writers never share a temporary.
  static std::atomic<uint64_t> serial{0};
  const std::string temporary = (folder / absl::StrCat(".", target.filename().string(), ".tmp.",
                                                       ::getpid(), ".", serial.fetch_add(1)))
                                    .string();
  const std::string text = SerializeModelConfig(config);
  absl::Status status = [&]() -> absl::Status {
    auto file = io_internal::OpenForWrite(temporary);
    if (!file.ok()) return file.status();
    if (absl::Status s = io_internal::WriteAll(file->get(), text.data(), text.size(), temporary);
        !s.ok()) {
      return s;
    }
    if (::fsync(file->get()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("fsync of ", temporary, " failed"));
    }
    if (absl::Status s = file->Close(temporary); !s.ok()) return s;
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot rename ", temporary, " to ", path));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    return absl::Status(status.code(), absl::StrCat("cannot write ", path, ": ", status.message()));
  }
  // The rename is durable once the folder's entry is on disk.
  if (absl::Status s = FsyncFolder(folder.string()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("wrote ", path, " but ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace dino::serving
