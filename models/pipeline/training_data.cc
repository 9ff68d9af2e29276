#include "models/pipeline/training_data.h"

#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "models/io/npz.h"
#include "models/pipeline/files.h"

namespace dino::pipeline {
namespace {

// The array `name` of `reader` as a float64 tensor of the selected rows (axis 0).
absl::StatusOr<torch::Tensor> ReadRows(const NpzReader& reader, const std::string& name,
                                       int64_t first, int64_t count, torch::Dtype dtype) {
  absl::StatusOr<NpyArray> array = reader.Read(name);
  if (!array.ok()) return array.status();
  if (array->shape.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": array '", name, "' has no sample axis"));
  }
  const int64_t n = array->shape[0];
  const int64_t end = count < 0 ? n : first + count;
  if (first < 0 || first > n || end > n) {
    return absl::InvalidArgumentError(absl::StrCat(reader.path(), ": array '", name, "' has ", n,
                                                   " samples; samples [", first, ", ", end,
                                                   ") were asked for"));
  }
  absl::StatusOr<NpyArray> wide =
      array->dtype == NpyDType::kFloat64 ? std::move(array) : array->AsType(NpyDType::kFloat64);
  if (!wide.ok()) return wide.status();
  std::vector<int64_t> shape = wide->shape;
  const int64_t row = shape.size() > 1 ? wide->num_elements() / std::max<int64_t>(n, 1) : 1;
  shape[0] = end - first;
  // A view of the decoded bytes (kept alive by the tensor) rather than a copy: the Jacobian
  // arrays of a few thousand samples are gigabytes, and the conversion to `dtype` (or the
  // clone of a row subset) is the only copy made.
  auto owner = std::make_shared<NpyArray>(*std::move(wide));
  double* rows_begin = reinterpret_cast<double*>(owner->bytes.data()) + first * row;
  torch::Tensor rows = torch::from_blob(
      rows_begin, shape, [owner](void*) {}, torch::kFloat64);
  if (dtype != torch::kFloat64) return rows.to(dtype);
  return end - first == n ? rows : rows.clone();
}

absl::StatusOr<NpzReader> OpenIn(const std::string& dir, const std::string& file) {
  return NpzReader::Open((std::filesystem::path(dir) / file).string());
}

}  // namespace

absl::StatusOr<training::Dataset> LoadDataset(const DataSelection& selection) {
  namespace fs = std::filesystem;
  training::Dataset data;
  auto mq = OpenIn(selection.dir, "mq_data.npz");
  if (!mq.ok()) return mq.status();
  auto m = ReadRows(*mq, "m_data", selection.first, selection.count, selection.dtype);
  if (!m.ok()) return m.status();
  auto q = ReadRows(*mq, "q_data", selection.first, selection.count, selection.dtype);
  if (!q.ok()) return q.status();
  data.m = *std::move(m);
  data.q = *std::move(q);

  JacobianFiles source = selection.jacobian;
  if (source == JacobianFiles::kAuto) {
    source = fs::exists(fs::path(selection.dir) / "J_data.npz")      ? JacobianFiles::kFull
             : fs::exists(fs::path(selection.dir) / "Jsvd_data.npz") ? JacobianFiles::kSvd
                                                                     : JacobianFiles::kNone;
  }
  if (source == JacobianFiles::kFull) {
    auto file = OpenIn(selection.dir, "J_data.npz");
    if (!file.ok()) return file.status();
    auto jacobian = ReadRows(*file, "J_data", selection.first, selection.count, selection.dtype);
    if (!jacobian.ok()) return jacobian.status();
    data.jacobian = *std::move(jacobian);
  } else if (source == JacobianFiles::kSvd) {
    auto file = OpenIn(selection.dir, "Jsvd_data.npz");
    if (!file.ok()) return file.status();
    auto u = ReadRows(*file, "U_data", selection.first, selection.count, selection.dtype);
    if (!u.ok()) return u.status();
    auto sigma = ReadRows(*file, "sigma_data", selection.first, selection.count, selection.dtype);
    if (!sigma.ok()) return sigma.status();
    auto v = ReadRows(*file, "V_data", selection.first, selection.count, selection.dtype);
    if (!v.ok()) return v.status();
    data.svd_u = *std::move(u);
    data.svd_sigma = *std::move(sigma);
    data.svd_v = *std::move(v);
  }
  try {
    data.Validate();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(selection.dir, ": ", e.what()));
  }
  return data;
}

absl::Status SaveDataset(const training::Dataset& data, const std::string& dir) {
  if (data.reduced_jacobian.defined()) {
    return absl::InvalidArgumentError(
        "reduced Jacobians (Uᵀ J V) have no file in the data directory layout");
  }
  if (absl::Status made = MakeDirectories(dir); !made.ok()) return made;
  auto write = [&dir](const char* file, std::vector<std::pair<const char*, torch::Tensor>> arrays) {
    absl::StatusOr<AtomicNpzWriter> writer = AtomicNpzWriter::Create(JoinPath(dir, file));
    if (!writer.ok()) return writer.status();
    for (const auto& [name, tensor] : arrays) {
      const torch::Tensor values = tensor.to(torch::kFloat64).contiguous();
      absl::StatusOr<NpyArray> array = NpyArray::FromValues<double>(
          std::vector<int64_t>(values.sizes().begin(), values.sizes().end()),
          absl::MakeConstSpan(values.data_ptr<double>(), values.numel()));
      if (!array.ok()) return array.status();
      if (absl::Status added = writer->Add(name, *array); !added.ok()) return added;
    }
    return writer->Commit();
  };
  if (absl::Status s = write("mq_data.npz", {{"m_data", data.m}, {"q_data", data.q}}); !s.ok()) {
    return s;
  }
  if (data.jacobian.defined()) return write("J_data.npz", {{"J_data", data.jacobian}});
  if (data.svd_u.defined()) {
    return write("Jsvd_data.npz",
                 {{"U_data", data.svd_u}, {"sigma_data", data.svd_sigma}, {"V_data", data.svd_v}});
  }
  return absl::OkStatus();
}

absl::StatusOr<BasesFile> LoadBases(const std::string& path, int64_t input_rank,
                                    int64_t output_rank) {
  auto reader = NpzReader::Open(path);
  if (!reader.ok()) return reader.status();
  BasesFile bases;
  const std::pair<const char*, torch::Tensor*> fields[] = {{"input_basis", &bases.input_basis},
                                                           {"output_basis", &bases.output_basis},
                                                           {"output_shift", &bases.output_shift}};
  for (const auto& [name, tensor] : fields) {
    auto array = ReadRows(*reader, name, 0, -1, torch::kFloat64);
    if (!array.ok()) return array.status();
    *tensor = *std::move(array);
  }
  const std::pair<int64_t, torch::Tensor*> truncations[] = {{input_rank, &bases.input_basis},
                                                            {output_rank, &bases.output_basis}};
  for (const auto& [rank, basis] : truncations) {
    if (basis->dim() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": a basis must be a matrix"));
    }
    if (rank > basis->size(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": asked for rank ", rank, " but the basis has ", basis->size(1), " columns"));
    }
    if (rank > 0) *basis = basis->narrow(1, 0, rank).contiguous();
  }
  return bases;
}

}  // namespace dino::pipeline
