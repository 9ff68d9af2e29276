#include "client/cli/json_array.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dino::cli {
namespace {

std::string IndexPath(const std::vector<size_t>& index) {
  std::string out;
  for (size_t i : index) absl::StrAppend(&out, "[", i, "]");
  return out;
}

absl::string_view JsonTypeName(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::string:
      return "a string";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    default:
      return "not a number";
  }
}

// Walks the nest depth-first, checking every list at depth d has length shape[d] and every
// leaf sits at depth rank, and appends the leaves in row-major order.
absl::Status Flatten(const nlohmann::json& value, const std::vector<int64_t>& shape,
                     std::vector<size_t>* index, std::vector<double>* out) {
  const size_t depth = index->size();
  if (depth == shape.size()) {
    if (!value.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("element ", IndexPath(*index), " is ",
                                                     JsonTypeName(value), ", expected a number"));
    }
    out->push_back(value.get<double>());
    return absl::OkStatus();
  }
  if (!value.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "element ", IndexPath(*index), " is ", value.is_number() ? "a number" : JsonTypeName(value),
        ", expected a list of length ", shape[depth], " (lists must be rectangular)"));
  }
  if (static_cast<int64_t>(value.size()) != shape[depth]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "list ", IndexPath(*index), " has ", value.size(), " elements, expected ", shape[depth],
        " like the first list at that depth (lists must be rectangular)"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    index->push_back(i);
    absl::Status s = Flatten(value[i], shape, index, out);
    index->pop_back();
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

template <typename T>
void AppendNumber(T value, std::string* out) {
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(value)) {
      out->append("null");
      return;
    }
  }
  char buffer[64];
  // std::to_chars without a precision gives the shortest text that round-trips for T.
  std::to_chars_result r = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out->append(buffer, r.ptr);
}

template <typename T>
void AppendNested(const T* data, const std::vector<int64_t>& shape, size_t depth, int64_t* pos,
                  std::string* out) {
  if (depth == shape.size()) {
    AppendNumber(data[(*pos)++], out);
    return;
  }
  out->push_back('[');
  for (int64_t i = 0; i < shape[depth]; ++i) {
    if (i > 0) out->push_back(',');
    AppendNested(data, shape, depth + 1, pos, out);
  }
  out->push_back(']');
}

template <typename T>
void AppendTyped(const NpyArray& array, std::string* out) {
  int64_t pos = 0;
  AppendNested(reinterpret_cast<const T*>(array.bytes.data()), array.shape, 0, &pos, out);
}

}  // namespace

absl::StatusOr<NpyArray> ParseJsonArray(absl::string_view text) {
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 5: ..."
    // (or out_of_range.406 for a number beyond double's range);
    // the prefix is noise for a CLI user.
    absl::string_view what = e.what();
    if (size_t p = what.find("] "); p != absl::string_view::npos) what.remove_prefix(p + 2);
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON array: ", what));
  }
  // The shape is read off the first element at each depth; Flatten then checks the rest.
  std::vector<int64_t> shape;
  for (const nlohmann::json* v = &value; v->is_array(); v = &(*v)[0]) {
    shape.push_back(static_cast<int64_t>(v->size()));
    if (v->empty()) break;
  }
  std::vector<double> values;
  std::vector<size_t> index;
  if (absl::Status s = Flatten(value, shape, &index, &values); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON array: ", s.message()));
  }
  return NpyArray::FromValues<double>(std::move(shape), values);
}

void AppendJsonArray(const NpyArray& array, std::string* out) {
  switch (array.dtype) {
    case NpyDType::kFloat32:
      AppendTyped<float>(array, out);
      break;
    case NpyDType::kFloat64:
      AppendTyped<double>(array, out);
      break;
    case NpyDType::kInt32:
      AppendTyped<int32_t>(array, out);
      break;
    case NpyDType::kInt64:
      AppendTyped<int64_t>(array, out);
      break;
  }
}

std::string FormatJsonArray(const NpyArray& array) {
  std::string out;
  AppendJsonArray(array, &out);
  return out;
}

}  // namespace dino::cli
