#include "client/cli/training_support.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/io/npz.h"

namespace dino::cli {
namespace {

using client::SampleArrays;

// Reads `name` from `reader`, converting integers to float64 and checking its rank.
absl::StatusOr<NpyArray> ReadMember(const NpzReader& reader, const std::string& name, int rank,
                                    absl::string_view layout) {
  absl::StatusOr<NpyArray> array = reader.Read(name);
  if (!array.ok()) return array.status();
  if (array->dtype == NpyDType::kInt32 || array->dtype == NpyDType::kInt64) {
    array = array->AsType(NpyDType::kFloat64);
    if (!array.ok()) return array.status();
  }
  if (array->rank() != rank) {
    return absl::InvalidArgumentError(absl::StrCat(reader.path(), ": array '", name,
                                                   "' must have shape ", layout, ", got ",
                                                   ShapeToString(array->shape)));
  }
  return array;
}

// Dimension `axis` of `array` must be `expected` (named `what` in the message).
absl::Status CheckDim(const NpyArray& array, int axis, int64_t expected, absl::string_view file,
                      absl::string_view name, absl::string_view what) {
  if (array.shape[axis] == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(file, ": array '", name, "' has shape ",
                                                 ShapeToString(array.shape), ", but ", what, " is ",
                                                 expected));
}

absl::StatusOr<NpzReader> OpenIn(const std::string& dir, const char* file) {
  return NpzReader::Open((std::filesystem::path(dir) / file).string());
}

std::string Compact(double v) {
  if (!std::isfinite(v)) return "nan";
  const double a = std::fabs(v);
  if (a >= 1e4) return absl::StrFormat("%.1fk", v / 1e3);
  if (a >= 100) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.3g", v);
}

std::string Loss(double v) { return absl::StrFormat("%.4g", v); }

std::string Accuracy(bool has, double v) { return has ? absl::StrFormat("%.4f", v) : "-"; }

// Keys in the proto's field order, which reads better than sorted.
using Json = nlohmann::ordered_json;

Json AccuraciesJson(bool present, const v1::Accuracies& a) {
  if (!present) return nullptr;
  Json out = {{"samples", a.samples()}};
  out["l2"] = a.has_l2() ? Json(a.l2()) : Json(nullptr);
  out["h1"] = a.has_h1() ? Json(a.h1()) : Json(nullptr);
  out["reduced_h1"] = a.has_reduced_h1() ? Json(a.reduced_h1()) : Json(nullptr);
  return out;
}

Json StatusJson(const v1::JobStatus& s) {
  return {{"job_id", s.job_id()},
          {"base", {{"name", s.base().name()}, {"version", s.base().version()}}},
          {"state", client::JobStateName(s.state())},
          {"message", s.message()},
          {"train_samples", s.train_samples()},
          {"validation_samples", s.validation_samples()},
          {"samples_received", s.samples_received()},
          {"bytes_received", s.bytes_received()},
          {"epoch", s.epoch()},
          {"epochs", s.epochs()},
          {"train_loss", s.train_loss()},
          {"validation_loss", s.validation_loss()},
          {"validation", AccuraciesJson(s.has_validation(), s.validation())},
          {"base_validation", AccuraciesJson(s.has_base_validation(), s.base_validation())},
          {"samples_per_second", s.samples_per_second()},
          {"eta_seconds", s.eta_seconds()},
          {"new_version", s.new_version()},
          {"created_unix_seconds", s.created_unix_seconds()},
          {"updated_unix_seconds", s.updated_unix_seconds()},
          {"revision", s.revision()}};
}

std::string Dump(const Json& j, int indent) {
  // Losses can be NaN; nlohmann writes non-finite numbers as null.
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Training has reached its first epoch, so losses and epochs mean something.
bool HasTrainingProgress(const v1::JobStatus& s) { return s.epochs() > 0 && s.epoch() > 0; }

}  // namespace

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return errno != 0 ? absl::ErrnoToStatus(errno, absl::StrCat("cannot open token file ", path))
                      : absl::NotFoundError(absl::StrCat("cannot open token file ", path));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read token file ", path));
  std::string token = text.str();
  // Surrounding whitespace (a final newline, say) is no part of the token; the server reads
  // its --admin_token_file the same way.
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("token file ", path, " is empty"));
  }
  if (absl::Status s = client::ValidateBearerToken(token); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": ", s.message()));
  }
  return token;
}

absl::StatusOr<JacobianMode> ParseJacobianMode(absl::string_view name) {
  if (name == "auto") return JacobianMode::kAuto;
  if (name == "full") return JacobianMode::kFull;
  if (name == "svd") return JacobianMode::kSvd;
  if (name == "none") return JacobianMode::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Jacobian mode '", name, "'; expected auto, full, svd or none"));
}

int64_t FineTuneData::BytesPerSample() const {
  int64_t bytes = 0;
  for (const NpyArray* a : {&m, &q, &jacobian, &u, &sigma, &v}) {
    if (a->rank() == 0 || a->shape[0] == 0) continue;
    bytes += static_cast<int64_t>(a->bytes.size()) / a->shape[0];
  }
  return bytes;
}

absl::StatusOr<FineTuneData> LoadFineTuneData(const std::string& dir, JacobianMode mode,
                                              int64_t count) {
  namespace fs = std::filesystem;
  FineTuneData data;
  data.dir = dir;
  absl::StatusOr<NpzReader> mq = OpenIn(dir, "mq_data.npz");
  if (!mq.ok()) return mq.status();
  absl::StatusOr<NpyArray> m = ReadMember(*mq, "m_data", 2, "[n, d_M]");
  if (!m.ok()) return m.status();
  absl::StatusOr<NpyArray> q = ReadMember(*mq, "q_data", 2, "[n, d_Q]");
  if (!q.ok()) return q.status();
  data.m = *std::move(m);
  data.q = *std::move(q);
  const int64_t n = data.m.shape[0], d_m = data.m.shape[1], d_q = data.q.shape[1];
  if (absl::Status s = CheckDim(data.q, 0, n, mq->path(), "q_data", "the number of samples n");
      !s.ok()) {
    return s;
  }

  if (mode == JacobianMode::kAuto) {
    mode = fs::exists(fs::path(dir) / "J_data.npz")      ? JacobianMode::kFull
           : fs::exists(fs::path(dir) / "Jsvd_data.npz") ? JacobianMode::kSvd
                                                         : JacobianMode::kNone;
  }
  if (mode == JacobianMode::kFull) {
    absl::StatusOr<NpzReader> file = OpenIn(dir, "J_data.npz");
    if (!file.ok()) return file.status();
    absl::StatusOr<NpyArray> j = ReadMember(*file, "J_data", 3, "[n, d_Q, d_M]");
    if (!j.ok()) return j.status();
    for (auto [axis, expected, what] : {std::tuple<int, int64_t, const char*>{0, n, "n"},
                                        {1, d_q, "d_Q (q_data)"},
                                        {2, d_m, "d_M (m_data)"}}) {
      if (absl::Status s = CheckDim(*j, axis, expected, file->path(), "J_data", what); !s.ok()) {
        return s;
      }
    }
    data.jacobian = *std::move(j);
    data.form = SampleArrays::JacobianForm::kFull;
  } else if (mode == JacobianMode::kSvd) {
    absl::StatusOr<NpzReader> file = OpenIn(dir, "Jsvd_data.npz");
    if (!file.ok()) return file.status();
    absl::StatusOr<NpyArray> u = ReadMember(*file, "U_data", 3, "[n, d_Q, r]");
    if (!u.ok()) return u.status();
    absl::StatusOr<NpyArray> sigma = ReadMember(*file, "sigma_data", 2, "[n, r]");
    if (!sigma.ok()) return sigma.status();
    absl::StatusOr<NpyArray> v = ReadMember(*file, "V_data", 3, "[n, d_M, r]");
    if (!v.ok()) return v.status();
    const int64_t r = sigma->shape[1];
    const std::string& path = file->path();
    for (auto [array, name, axis, expected, what] :
         {std::tuple<const NpyArray*, const char*, int, int64_t, const char*>{&*u, "U_data", 0, n,
                                                                              "n"},
          {&*u, "U_data", 1, d_q, "d_Q (q_data)"},
          {&*u, "U_data", 2, r, "r (sigma_data)"},
          {&*sigma, "sigma_data", 0, n, "n"},
          {&*v, "V_data", 0, n, "n"},
          {&*v, "V_data", 1, d_m, "d_M (m_data)"},
          {&*v, "V_data", 2, r, "r (sigma_data)"}}) {
      if (absl::Status s = CheckDim(*array, axis, expected, path, name, what); !s.ok()) return s;
    }
    data.u = *std::move(u);
    data.sigma = *std::move(sigma);
    data.v = *std::move(v);
    data.form = SampleArrays::JacobianForm::kSvd;
  }

  if (count >= 0 && count != n) {
    if (count > n) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, " holds ", n, " samples; ", count, " were asked for"));
    }
    for (NpyArray* a : {&data.m, &data.q, &data.jacobian, &data.u, &data.sigma, &data.v}) {
      if (a->rank() == 0) continue;
      absl::StatusOr<NpyArray> head = SliceRows(*a, 0, count);
      if (!head.ok()) return head.status();
      *a = *std::move(head);
    }
  }
  return data;
}

absl::StatusOr<NpyArray> SliceRows(const NpyArray& array, int64_t begin, int64_t end) {
  if (array.rank() == 0) {
    return absl::InvalidArgumentError("cannot take rows of a rank-0 array");
  }
  const int64_t n = array.shape[0];
  if (begin < 0 || begin > end || end > n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rows [", begin, ", ", end, ") out of range for shape ", ShapeToString(array.shape)));
  }
  NpyArray out;
  out.shape = array.shape;
  out.shape[0] = end - begin;
  out.dtype = array.dtype;
  const size_t row_bytes = n == 0 ? 0 : array.bytes.size() / static_cast<size_t>(n);
  out.bytes.assign(array.bytes.begin() + static_cast<std::ptrdiff_t>(begin * row_bytes),
                   array.bytes.begin() + static_cast<std::ptrdiff_t>(end * row_bytes));
  return out;
}

absl::StatusOr<SampleArrays> SliceSamples(const FineTuneData& data, int64_t begin, int64_t end,
                                          bool validation) {
  SampleArrays out;
  out.form = data.form;
  out.validation = validation;
  std::vector<std::pair<const NpyArray*, NpyArray*>> parts = {{&data.m, &out.m}, {&data.q, &out.q}};
  if (data.form == SampleArrays::JacobianForm::kFull) {
    parts.emplace_back(&data.jacobian, &out.jacobian);
  } else if (data.form == SampleArrays::JacobianForm::kSvd) {
    parts.emplace_back(&data.u, &out.u);
    parts.emplace_back(&data.sigma, &out.sigma);
    parts.emplace_back(&data.v, &out.v);
  }
  for (const auto& [from, to] : parts) {
    absl::StatusOr<NpyArray> rows = SliceRows(*from, begin, end);
    if (!rows.ok()) return rows.status();
    *to = *std::move(rows);
  }
  return out;
}

int64_t ChunkSamples(int64_t bytes_per_sample, int64_t budget_bytes) {
  if (bytes_per_sample <= 0) return std::max<int64_t>(budget_bytes, 1);
  return std::max<int64_t>(budget_bytes / bytes_per_sample, 1);
}

std::string FormatSeconds(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s % 86400) / 3600);
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  if (b < 1024.0 * 1024) return absl::StrFormat("%.1f KiB", b / 1024);
  if (b < 1024.0 * 1024 * 1024) return absl::StrFormat("%.1f MiB", b / (1024.0 * 1024));
  return absl::StrFormat("%.2f GiB", b / (1024.0 * 1024 * 1024));
}

std::string FormatUploadProgress(const client::UploadProgress& p, int64_t total_samples) {
  const double elapsed = absl::ToDoubleSeconds(p.elapsed);
  std::string out = absl::StrCat("upload ", p.samples, "/", total_samples, " samples");
  if (total_samples > 0) {
    absl::StrAppend(&out, absl::StrFormat(" (%d%%)", 100 * p.samples / total_samples));
  }
  absl::StrAppend(&out, ", ", FormatBytes(p.bytes));
  if (elapsed > 0) {
    const double rate = static_cast<double>(p.samples) / elapsed;
    absl::StrAppend(&out, ", ", Compact(rate), " samples/s, ",
                    FormatBytes(static_cast<int64_t>(static_cast<double>(p.bytes) / elapsed)),
                    "/s");
    if (p.samples < total_samples && rate > 0) {
      absl::StrAppend(&out, ", ETA ",
                      FormatSeconds(static_cast<double>(total_samples - p.samples) / rate));
    }
  }
  return out;
}

std::string FormatJobProgress(const v1::JobStatus& s) {
  std::string out = client::JobStateName(s.state());
  switch (s.state()) {
    case v1::RECEIVING:
      absl::StrAppend(&out, ", ", s.samples_received(), " samples received (",
                      FormatBytes(s.bytes_received()), ")");
      break;
    case v1::QUEUED:
      absl::StrAppend(&out, ", ", s.train_samples(), " training + ", s.validation_samples(),
                      " validation samples");
      break;
    default:
      break;
  }
  if (s.epochs() > 0 && s.state() != v1::RECEIVING && s.state() != v1::QUEUED) {
    absl::StrAppend(&out, ", epoch ", s.epoch(), "/", s.epochs());
  }
  if (HasTrainingProgress(s)) {
    absl::StrAppend(&out, ", loss train ", Loss(s.train_loss()), " validation ",
                    Loss(s.validation_loss()));
  }
  if (s.has_validation()) {
    const v1::Accuracies& a = s.validation();
    std::string acc;
    if (a.has_l2()) absl::StrAppend(&acc, " l2 ", absl::StrFormat("%.4f", a.l2()));
    if (a.has_h1()) absl::StrAppend(&acc, " h1 ", absl::StrFormat("%.4f", a.h1()));
    if (a.has_reduced_h1()) {
      absl::StrAppend(&acc, " reduced_h1 ", absl::StrFormat("%.4f", a.reduced_h1()));
    }
    if (!acc.empty()) absl::StrAppend(&out, ", accuracy", acc);
  }
  if (s.state() == v1::TRAINING) {
    if (s.samples_per_second() > 0) {
      absl::StrAppend(&out, ", ", Compact(s.samples_per_second()), " samples/s");
    }
    if (s.eta_seconds() > 0) absl::StrAppend(&out, ", ETA ", FormatSeconds(s.eta_seconds()));
  }
  if (client::IsTerminal(s.state()) && !s.message().empty()) {
    absl::StrAppend(&out, ": ", s.message());
  }
  return out;
}

std::string FormatJobSummary(const v1::JobStatus& s) {
  std::string out;
  auto line = [&out](absl::string_view label, absl::string_view value) {
    absl::StrAppend(&out, absl::StrFormat("%-20s%s\n", absl::StrCat(label, ":"), value));
  };
  line("job", s.job_id());
  line("model", absl::StrCat(s.base().name(), " (base version ", s.base().version(), ")"));
  line("state", client::JobStateName(s.state()));
  if (!s.message().empty()) line("message", s.message());
  if (s.new_version() > 0) line("new version", absl::StrCat(s.new_version()));
  line("samples",
       absl::StrCat(s.train_samples(), " training, ", s.validation_samples(), " validation (",
                    s.samples_received(), " received, ", FormatBytes(s.bytes_received()), ")"));
  if (s.epochs() > 0) line("epochs", absl::StrCat(s.epoch(), "/", s.epochs()));
  if (HasTrainingProgress(s)) {
    line("loss",
         absl::StrCat("train ", Loss(s.train_loss()), ", validation ", Loss(s.validation_loss())));
  }
  if (s.has_validation() || s.has_base_validation()) {
    const v1::Accuracies& n = s.validation();
    const v1::Accuracies& b = s.base_validation();
    absl::StrAppend(&out, absl::StrFormat("%-20s%-10s%-10s\n", "accuracy:", "base", "new"));
    absl::StrAppend(&out, absl::StrFormat("%-20s%-10s%-10s\n", "  l2", Accuracy(b.has_l2(), b.l2()),
                                          Accuracy(n.has_l2(), n.l2())));
    absl::StrAppend(&out, absl::StrFormat("%-20s%-10s%-10s\n", "  h1", Accuracy(b.has_h1(), b.h1()),
                                          Accuracy(n.has_h1(), n.h1())));
    absl::StrAppend(&out, absl::StrFormat("%-20s%-10s%-10s\n", "  reduced_h1",
                                          Accuracy(b.has_reduced_h1(), b.reduced_h1()),
                                          Accuracy(n.has_reduced_h1(), n.reduced_h1())));
  }
  return out;
}

std::string FormatJobTable(const std::vector<v1::JobStatus>& jobs) {
  if (jobs.empty()) return "(no jobs)\n";
  std::vector<std::vector<std::string>> rows = {
      {"JOB", "MODEL", "BASE", "STATE", "EPOCH", "SAMPLES", "NEW", "MESSAGE"}};
  for (const v1::JobStatus& s : jobs) {
    std::string message = s.message();
    if (message.size() > 60) message = message.substr(0, 57) + "...";
    rows.push_back({s.job_id(), s.base().name(), absl::StrCat(s.base().version()),
                    client::JobStateName(s.state()),
                    s.epochs() > 0 ? absl::StrCat(s.epoch(), "/", s.epochs()) : "-",
                    absl::StrCat(s.train_samples() + s.validation_samples()),
                    s.new_version() > 0 ? absl::StrCat(s.new_version()) : "-", message});
  }
  std::vector<size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i + 1 == row.size()) {
        line += row[i];
      } else {
        absl::StrAppend(&line, row[i], std::string(widths[i] - row[i].size() + 2, ' '));
      }
    }
    line.resize(absl::StripTrailingAsciiWhitespace(line).size());
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string JobStatusJson(const v1::JobStatus& status, int indent) {
  return Dump(StatusJson(status), indent);
}

std::string JobListJson(const std::vector<v1::JobStatus>& jobs, int indent) {
  Json out = {{"jobs", Json::array()}};
  for (const v1::JobStatus& s : jobs) out["jobs"].push_back(StatusJson(s));
  return Dump(out, indent);
}

ProgressPrinter::ProgressPrinter(std::FILE* out, bool tty, absl::Duration tty_interval,
                                 absl::Duration line_interval)
    : out_(out), tty_(tty), tty_interval_(tty_interval), line_interval_(line_interval) {}

void ProgressPrinter::Update(const std::string& line, bool force) {
  const absl::Time now = absl::Now();
  if (!force && now - last_ < (tty_ ? tty_interval_ : line_interval_)) return;
  if (!tty_ && line == last_line_) return;
  last_ = now;
  last_line_ = line;
  if (tty_) {
    // Return to the line's start, print, and clear what a longer previous line left.
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    pending_newline_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressPrinter::Finish() {
  if (pending_newline_) {
    std::fputc('\n', out_);
    std::fflush(out_);
    pending_newline_ = false;
  }
}

}  // namespace dino::cli
