// `dino-train bases` as a library call: the arrays of bases.npz and their properties, the
// spectra CSV and JSON summary, the choice of Jacobian data, and error messages.
#include "models/pipeline/compute_bases.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "models/bases/bases.h"
#include "models/io/npz.h"
#include "models/pipeline/files.h"
#include "models/pipeline/generate.h"
#include "tests/pipeline/test_util.h"

namespace dino::pipeline {
namespace {

using test_util::FileContents;
using test_util::ScratchDir;
using test_util::SmallOptions;
using ::testing::HasSubstr;
using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Eigen::MatrixXd Matrix(const NpyArray& array) {
  EXPECT_EQ(array.rank(), 2);
  return Eigen::Map<const RowMajorMatrix>(array.View<double>().data(), array.shape[0],
                                          array.shape[1]);
}

Eigen::VectorXd Vector(const NpyArray& array) {
  EXPECT_EQ(array.rank(), 1);
  return Eigen::Map<const Eigen::VectorXd>(array.View<double>().data(), array.shape[0]);
}

std::map<std::string, NpyArray> ReadAll(const std::string& path) {
  absl::StatusOr<std::map<std::string, NpyArray>> arrays = ReadNpz(path);
  EXPECT_TRUE(arrays.ok()) << arrays.status();
  return arrays.ok() ? *std::move(arrays) : std::map<std::string, NpyArray>();
}

// One data set shared by the tests: 12 Poisson samples on the 8 × 8 mesh with full Jacobians
// and their complete SVDs (rank 50 = d_Q).
class ComputeBasesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new ScratchDir();
    GenerateOptions options = SmallOptions(data_->path(), 12);
    options.rank = 50;
    const absl::StatusOr<GenerateReport> report = Generate(options);
    ASSERT_TRUE(report.ok()) << report.status();
  }
  static void TearDownTestSuite() {
    delete data_;
    data_ = nullptr;
  }

  BasesOptions Options() const {
    BasesOptions options;
    options.data_dir = data_->path();
    options.out_dir = out_.path();
    options.input_rank = 20;
    options.threads = 2;
    options.tolerance = 1e-10;
    return options;
  }

  static ScratchDir* data_;
  ScratchDir out_;
};

ScratchDir* ComputeBasesTest::data_ = nullptr;

TEST_F(ComputeBasesTest, WritesEveryBasisWithItsSpectrum) {
  const absl::StatusOr<BasesReport> report = ComputeBases(Options());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->samples, 12);
  EXPECT_EQ(report->input_rank, 20);
  EXPECT_EQ(report->output_rank, 50);
  EXPECT_EQ(report->jacobian_file, data_->path() + "/J_data.npz");
  EXPECT_EQ(report->bases,
            (std::vector<std::string>{"active_subspace", "output_derivative", "pod", "kle"}));

  std::map<std::string, NpyArray> arrays = ReadAll(out_ / "bases.npz");
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"input_basis", {81, 20}},
      {"output_basis", {50, 50}},
      {"output_shift", {50}},
      {"active_subspace_basis", {81, 20}},
      {"active_subspace_eigenvalues", {20}},
      {"output_derivative_basis", {50, 50}},
      {"output_derivative_eigenvalues", {50}},
      {"pod_basis", {50, 50}},
      {"pod_eigenvalues", {50}},
      {"kle_basis", {81, 20}},
      {"kle_modes", {81, 20}},
      {"kle_eigenvalues", {20}},
      {"kle_coordinate_variances", {20}},
  };
  ASSERT_EQ(arrays.size(), shapes.size());
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(arrays.count(name)) << name;
    EXPECT_EQ(arrays[name].shape, shape) << name;
  }
  // The DIPNet's arrays are the chosen bases (defaults: active subspace and POD) and the mean.
  EXPECT_EQ(arrays["input_basis"], arrays["active_subspace_basis"]);
  EXPECT_EQ(arrays["output_basis"], arrays["pod_basis"]);
  const NpyArray q = test_util::ReadArray(data_->path() + "/mq_data.npz", "q_data");
  const Eigen::VectorXd mean = Matrix(q).colwise().mean().transpose();
  EXPECT_LT((Vector(arrays["output_shift"]) - mean).cwiseAbs().maxCoeff(), 1e-14);
  // Orthonormal as the model contract requires (it checks max |BᵀB − I| ≤ 1e-6).
  for (const char* name : {"input_basis", "output_basis", "active_subspace_basis",
                           "output_derivative_basis", "pod_basis", "kle_basis"}) {
    EXPECT_LT(bases::OrthonormalityDefect(Matrix(arrays[name])), 1e-12) << name;
  }
  // Spectra are non-increasing.
  for (const char* name :
       {"active_subspace_eigenvalues", "output_derivative_eigenvalues", "kle_eigenvalues"}) {
    const Eigen::VectorXd values = Vector(arrays[name]);
    for (Eigen::Index k = 1; k < values.size(); ++k) {
      EXPECT_LE(values(k), values(k - 1) * (1 + 1e-12)) << name << " " << k;
    }
  }
  // The KLE of δ = 0.5: the constant mode has λ₁ = 1/δ² = 4.
  EXPECT_NEAR(Vector(arrays["kle_eigenvalues"])(0), 4.0, 1e-8);

  // spectra.csv: header, then max(r_M, d_Q) = 50 rows; the input spectra end after 20.
  std::istringstream csv(FileContents(out_ / "spectra.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "index,active_subspace,output_derivative,pod,kle");
  std::vector<std::string> rows;
  while (std::getline(csv, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), 50u);
  EXPECT_EQ(rows[0].substr(0, 2), "1,");
  EXPECT_THAT(rows[25], ::testing::StartsWith("26,,"));
  EXPECT_THAT(rows[25], ::testing::EndsWith(","));

  std::ifstream in(out_ / "bases.json");
  const nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["input_basis"], "active_subspace");
  EXPECT_EQ(summary["output_basis"], "pod");
  EXPECT_TRUE(summary["details"]["active_subspace"]["converged"].get<bool>());
  EXPECT_GT(summary["details"]["active_subspace"]["captured_fraction"].get<double>(), 0.9);
  EXPECT_LE(summary["details"]["active_subspace"]["captured_fraction"].get<double>(), 1.0);
  EXPECT_TRUE(summary["details"]["kle"]["converged"].get<bool>());
}

TEST_F(ComputeBasesTest, FullAndSvdJacobianDataGiveTheSameBases) {
  BasesOptions options = Options();
  options.jacobian_source = JacobianFiles::kFull;
  ASSERT_TRUE(ComputeBases(options).ok());
  std::map<std::string, NpyArray> full = ReadAll(out_ / "bases.npz");
  options.jacobian_source = JacobianFiles::kSvd;
  options.threads = 1;
  const absl::StatusOr<BasesReport> report = ComputeBases(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->jacobian_file, data_->path() + "/Jsvd_data.npz");
  std::map<std::string, NpyArray> svd = ReadAll(out_ / "bases.npz");
  const Eigen::VectorXd a = Vector(full["active_subspace_eigenvalues"]);
  const Eigen::VectorXd b = Vector(svd["active_subspace_eigenvalues"]);
  EXPECT_LT((a - b).cwiseAbs().maxCoeff(), 1e-10 * a(0));
  for (int k : {1, 5, 10}) {
    EXPECT_LT(bases::SubspaceDistance(Matrix(full["active_subspace_basis"]).leftCols(k),
                                      Matrix(svd["active_subspace_basis"]).leftCols(k)),
              1e-6)
        << k;
  }
  const Eigen::VectorXd c = Vector(full["output_derivative_eigenvalues"]);
  const Eigen::VectorXd d = Vector(svd["output_derivative_eigenvalues"]);
  EXPECT_LT((c - d).cwiseAbs().maxCoeff(), 1e-10 * c(0));
}

TEST_F(ComputeBasesTest, ChoosesTheKleAndTheOutputDerivativeBasis) {
  BasesOptions options = Options();
  options.input_basis = InputBasisKind::kKle;
  options.output_basis = OutputBasisKind::kOutputDerivative;
  options.output_rank = 10;
  ASSERT_TRUE(ComputeBases(options).ok());
  std::map<std::string, NpyArray> arrays = ReadAll(out_ / "bases.npz");
  EXPECT_EQ(arrays["input_basis"], arrays["kle_basis"]);
  EXPECT_EQ(arrays["output_basis"], arrays["output_derivative_basis"]);
  EXPECT_EQ(arrays["output_basis"].shape, (std::vector<int64_t>{50, 10}));
  EXPECT_EQ(arrays["pod_basis"].shape, (std::vector<int64_t>{50, 10}));
  EXPECT_EQ(arrays["pod_eigenvalues"].shape, (std::vector<int64_t>{50}));
}

TEST_F(ComputeBasesTest, WorksWithoutJacobiansOrGenerateJson) {
  // Outputs only, and no generate.json: POD always; the KLE only with --problem/--mesh.
  ScratchDir bare;
  std::filesystem::copy_file(data_->path() + "/mq_data.npz", bare / "mq_data.npz");
  BasesOptions options = Options();
  options.data_dir = bare.path();
  options.input_basis = InputBasisKind::kActiveSubspace;
  absl::Status status = ComputeBases(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("needs Jacobian data"));
  EXPECT_THAT(status.message(), HasSubstr("--jacobian svd or full"));

  options.input_basis = InputBasisKind::kKle;
  status = ComputeBases(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("--problem and --mesh"));

  options.problem = Problem::kPoisson;
  options.mesh = 8;
  const absl::StatusOr<BasesReport> report = ComputeBases(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->bases, (std::vector<std::string>{"pod", "kle"}));
  EXPECT_EQ(report->jacobian_file, "");
  std::map<std::string, NpyArray> arrays = ReadAll(out_ / "bases.npz");
  EXPECT_EQ(arrays.count("active_subspace_basis"), 0u);
  EXPECT_EQ(arrays["input_basis"], arrays["kle_basis"]);

  options.mesh = 9;  // 100 nodes, but d_M = 81.
  EXPECT_THAT(std::string(ComputeBases(options).status().message()), HasSubstr("d_M = 81"));
}

TEST_F(ComputeBasesTest, ErrorsNameTheFileFieldOrOption) {
  BasesOptions options = Options();
  options.input_rank = 82;
  absl::Status status = ComputeBases(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("--input-rank must be in [1, 81] (d_M)"));
  options.input_rank = 20;
  options.output_rank = 51;
  EXPECT_THAT(std::string(ComputeBases(options).status().message()), HasSubstr("--output-rank"));
  options.output_rank = 0;
  options.problem = Problem::kReactionDiffusion;
  EXPECT_THAT(std::string(ComputeBases(options).status().message()), HasSubstr("contradicts"));
  options.problem.reset();

  ScratchDir missing;
  options.data_dir = missing.path();
  status = ComputeBases(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(missing / "mq_data.npz"));

  // q_data of the wrong length, and a summary that disagrees with the data.
  ScratchDir bad;
  {
    absl::StatusOr<NpyArray> m = NpyArray::Zeros({4, 81}, NpyDType::kFloat64);
    absl::StatusOr<NpyArray> q = NpyArray::Zeros({3, 50}, NpyDType::kFloat64);
    ASSERT_TRUE(WriteNpz(bad / "mq_data.npz", {{"m_data", *m}, {"q_data", *q}}).ok());
  }
  options.data_dir = bad.path();
  status = ComputeBases(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("mq_data.npz: array 'q_data' has shape [3, 50], "
                                          "expected [4, *]"));
  std::filesystem::copy_file(data_->path() + "/generate.json", bad / "generate.json");
  {
    absl::StatusOr<NpyArray> q = NpyArray::Zeros({4, 50}, NpyDType::kFloat64);
    absl::StatusOr<NpyArray> m = NpyArray::Zeros({4, 81}, NpyDType::kFloat64);
    ASSERT_TRUE(WriteNpz(bad / "mq_data.npz", {{"m_data", *m}, {"q_data", *q}}).ok());
  }
  status = ComputeBases(options).status();
  EXPECT_THAT(status.message(), HasSubstr("says samples = 12"));
  std::ofstream(bad / "generate.json") << "{\"problem\": 3}";
  EXPECT_THAT(std::string(ComputeBases(options).status().message()),
              HasSubstr("field 'problem' is missing or has the wrong type"));
}

TEST_F(ComputeBasesTest, PlotScriptWritesAPng) {
  ASSERT_TRUE(ComputeBases(Options()).ok());
  if (std::system((std::string(DINO_PYTHON) + " -c 'import matplotlib' 2>/dev/null").c_str()) !=
      0) {
    GTEST_SKIP() << "matplotlib is not installed for " << DINO_PYTHON
                 << " (apt-get install python3-matplotlib)";
  }
  const std::string command = std::string(DINO_PYTHON) + " " + DINO_PLOT_SPECTRA_SCRIPT + " " +
                              out_.path() + " --title test > /dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const std::string png = FileContents(out_ / "spectra.png");
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
}

}  // namespace
}  // namespace dino::pipeline
