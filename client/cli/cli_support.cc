#include "client/cli/cli_support.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/json_array.h"
#include "models/io/npz.h"

namespace dino::cli {
namespace {

absl::Status Prefixed(absl::string_view flag, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(flag, ": ", status.message()));
}

// Inline JSON starts like a list or a number; anything else is a path. (A path that starts
// with a digit, like "1.npy", is still a path: it does not parse as a number as a whole.)
bool LooksLikeJson(absl::string_view text) {
  text = absl::StripLeadingAsciiWhitespace(text);
  if (text.empty()) return false;
  if (text.front() == '[') return true;
  double unused;
  const absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(text);
  const char* begin = trimmed.data();
  if (*begin == '+') return false;
  std::from_chars_result r = std::from_chars(begin, begin + trimmed.size(), unused);
  return r.ec == std::errc() && r.ptr == begin + trimmed.size();
}

absl::StatusOr<NpyArray> ParseInlineJson(absl::string_view text) {
  absl::StatusOr<NpyArray> array = ParseJsonArray(text);
  if (!array.ok()) return array.status();
  // A lone number is a one-element vector: the protocol has no use for rank-0 inputs.
  if (array->rank() == 0) array->shape = {1};
  return array;
}

absl::StatusOr<NpyArray> LoadFromNpz(const std::string& path, absl::string_view name) {
  absl::StatusOr<NpzReader> reader = NpzReader::Open(path);
  if (!reader.ok()) return reader.status();
  if (name.empty()) {
    const std::vector<std::string> names = reader->names();
    if (names.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(path, " holds ", names.size(), " arrays (",
                                                     absl::StrJoin(names, ", "), "); name one as ",
                                                     path, ":NAME"));
    }
    return reader->Read(names[0]);
  }
  return reader->Read(name);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return errno != 0 ? absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path))
                      : absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return text.str();
}

}  // namespace

bool EndsWith(absl::string_view s, absl::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

absl::StatusOr<NpyArray> LoadArrayArgument(absl::string_view value, absl::string_view flag) {
  absl::StatusOr<NpyArray> array;
  if (LooksLikeJson(value)) {
    array = ParseInlineJson(value);
  } else if (EndsWith(value, ".npy")) {
    array = ReadNpy(std::string(value));
  } else if (EndsWith(value, ".npz")) {
    array = LoadFromNpz(std::string(value), "");
  } else if (size_t colon = value.rfind(':');
             colon != absl::string_view::npos && EndsWith(value.substr(0, colon), ".npz")) {
    array = LoadFromNpz(std::string(value.substr(0, colon)), value.substr(colon + 1));
  } else if (EndsWith(value, ".json")) {
    absl::StatusOr<std::string> text = ReadTextFile(std::string(value));
    if (!text.ok()) return Prefixed(flag, text.status());
    array = ParseInlineJson(*text);
    if (!array.ok())
      return Prefixed(
          flag, absl::InvalidArgumentError(absl::StrCat(value, ": ", array.status().message())));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", value,
                     "' is neither inline JSON (e.g. '[0.1, 0.2]') nor a .npy, .npz[:NAME] "
                     "or .json file"));
  }
  if (!array.ok()) return Prefixed(flag, array.status());
  if (array->dtype == NpyDType::kInt32 || array->dtype == NpyDType::kInt64) {
    array = array->AsType(NpyDType::kFloat64);
    if (!array.ok()) return Prefixed(flag, array.status());
  }
  return array;
}

ArraySummary Summarize(const NpyArray& array) {
  ArraySummary s;
  s.count = array.num_elements();
  const std::vector<double> values = array.ToDoubles();
  double sum = 0, sum_sq = 0;
  int64_t finite = 0;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -std::numeric_limits<double>::infinity();
  for (double v : values) {
    if (!std::isfinite(v)) {
      ++s.non_finite;
      continue;
    }
    ++finite;
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
    sum += v;
    sum_sq += v * v;
  }
  if (finite == 0) {
    s.min = s.max = 0;
  } else {
    s.mean = sum / static_cast<double>(finite);
  }
  s.l2_norm = std::sqrt(sum_sq);
  return s;
}

std::string JsonString(absl::string_view s) { return nlohmann::json(std::string(s)).dump(); }

namespace {

std::string JsonDouble(double v) {
  if (!std::isfinite(v)) return "null";
  char buffer[64];
  std::to_chars_result r = std::to_chars(buffer, buffer + sizeof(buffer), v);
  return std::string(buffer, r.ptr);
}

absl::string_view WireDTypeName(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
      return "fp32";
    case NpyDType::kFloat64:
      return "fp64";
    default:
      return NpyDTypeName(dtype);
  }
}

}  // namespace

std::string ArrayJson(const NpyArray& array, int64_t max_print, absl::string_view file) {
  std::string out = absl::StrCat("{\"shape\": [", absl::StrJoin(array.shape, ", "),
                                 "], \"dtype\": \"", WireDTypeName(array.dtype), "\"");
  if (file.empty() && array.num_elements() <= max_print) {
    out += ", \"data\": ";
    AppendJsonArray(array, &out);
  } else {
    if (!file.empty()) absl::StrAppend(&out, ", \"file\": ", JsonString(file));
    const ArraySummary s = Summarize(array);
    absl::StrAppend(&out, ", \"summary\": {\"min\": ", JsonDouble(s.min),
                    ", \"max\": ", JsonDouble(s.max), ", \"mean\": ", JsonDouble(s.mean),
                    ", \"l2_norm\": ", JsonDouble(s.l2_norm), ", \"non_finite\": ", s.non_finite,
                    "}");
  }
  out += "}";
  return out;
}

absl::Status SaveArrays(const std::string& path,
                        const std::vector<std::pair<std::string, const NpyArray*>>& arrays) {
  if (EndsWith(path, ".npz")) {
    absl::StatusOr<NpzWriter> writer = NpzWriter::Create(path);
    if (!writer.ok()) return writer.status();
    for (const auto& [name, array] : arrays) {
      if (absl::Status s = writer->Add(name, *array); !s.ok()) return s;
    }
    return writer->Close();
  }
  if (EndsWith(path, ".npy")) {
    if (arrays.empty()) return absl::InvalidArgumentError("nothing to save");
    return WriteNpy(path, *arrays.front().second);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--out: '", path, "' must end in .npy (primary result) or .npz (all results)"));
}

std::string StatusText(const absl::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
}

}  // namespace dino::cli
