// `dino-train generate` as a library call: file layout and shapes, agreement with dino_pde,
// determinism across thread counts and chunk sizes, resumption, the Jacobian SVD, and NumPy
// interoperability.
#include "models/pipeline/generate.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/io/npz.h"
#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/sample.h"
#include "models/pipeline/files.h"
#include "tests/pipeline/test_util.h"

namespace dino::pipeline {
namespace {

using test_util::FileContents;
using test_util::ReadArray;
using test_util::ScratchDir;
using test_util::SmallOptions;
using ::testing::HasSubstr;
using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The data files of a directory, for byte-for-byte comparisons.
std::vector<std::string> DataFiles(const std::string& dir) {
  return {FileContents(dir + "/mq_data.npz"), FileContents(dir + "/Jsvd_data.npz"),
          FileContents(dir + "/J_data.npz")};
}

std::vector<std::string> ChunkFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/partial")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("samples_", 0) == 0) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Generate, WritesTheHippyflowLayoutMatchingDinoPde) {
  ScratchDir dir;
  const GenerateOptions options = SmallOptions(dir.path(), 10);
  const absl::StatusOr<GenerateReport> report = Generate(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->samples, 10);
  EXPECT_EQ(report->generated, 10);
  EXPECT_EQ(report->reused, 0);
  EXPECT_EQ(report->parameter_dim, 81);
  EXPECT_EQ(report->observation_dim, 50);
  EXPECT_GT(report->seconds_per_sample, 0.0);
  EXPECT_EQ(report->files.back(), dir / "generate.json");
  EXPECT_FALSE(std::filesystem::exists(dir / "partial"));

  const NpyArray m = ReadArray(dir / "mq_data.npz", "m_data");
  const NpyArray q = ReadArray(dir / "mq_data.npz", "q_data");
  const NpyArray u = ReadArray(dir / "Jsvd_data.npz", "U_data");
  const NpyArray sigma = ReadArray(dir / "Jsvd_data.npz", "sigma_data");
  const NpyArray v = ReadArray(dir / "Jsvd_data.npz", "V_data");
  const NpyArray j = ReadArray(dir / "J_data.npz", "J_data");
  EXPECT_EQ(m.shape, (std::vector<int64_t>{10, 81}));
  EXPECT_EQ(q.shape, (std::vector<int64_t>{10, 50}));
  EXPECT_EQ(u.shape, (std::vector<int64_t>{10, 50, 6}));
  EXPECT_EQ(sigma.shape, (std::vector<int64_t>{10, 6}));
  EXPECT_EQ(v.shape, (std::vector<int64_t>{10, 81, 6}));
  EXPECT_EQ(j.shape, (std::vector<int64_t>{10, 50, 81}));
  ASSERT_EQ(m.dtype, NpyDType::kFloat64);

  // Row i is GenerateSample(seed, i), in C order.
  pde::LogDiffusionModel model(pde::PoissonProblem(8));
  const pde::BiLaplacianPrior prior(model.mesh(), pde::PoissonPrior());
  pde::JacobianOptions full;
  for (int64_t i : {0, 7}) {
    const pde::Sample sample = pde::GenerateSample(model, prior, 17, i, full);
    EXPECT_EQ(Eigen::Map<const Eigen::VectorXd>(m.View<double>().data() + i * 81, 81),
              sample.parameter);
    EXPECT_EQ(Eigen::Map<const Eigen::VectorXd>(q.View<double>().data() + i * 50, 50),
              sample.observables);
    EXPECT_EQ(Eigen::MatrixXd(
                  Eigen::Map<const RowMajorMatrix>(j.View<double>().data() + i * 50 * 81, 50, 81)),
              sample.jacobian);
  }

  std::ifstream in(dir / "generate.json");
  const nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["problem"], "poisson");
  EXPECT_EQ(summary["mesh"], 8);
  EXPECT_EQ(summary["seed"], 17);
  EXPECT_EQ(summary["samples"], 10);
  EXPECT_EQ(summary["parameter_dim"], 81);
  EXPECT_EQ(summary["observation_dim"], 50);
  EXPECT_EQ(summary["jacobian"], "full");
  EXPECT_EQ(summary["rank"], 6);
  EXPECT_EQ(summary["files"], nlohmann::json({"mq_data.npz", "Jsvd_data.npz", "J_data.npz"}));
  EXPECT_GT(summary["seconds_per_sample"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(summary["prior"]["delta"].get<double>(), 0.5);
}

TEST(Generate, IsIdenticalForAnyThreadCountAndChunkSize) {
  ScratchDir a, b, c;
  GenerateOptions options = SmallOptions(a.path(), 9);
  options.threads = 1;
  options.chunk_size = 256;
  ASSERT_TRUE(Generate(options).ok());
  options.out_dir = b.path();
  options.threads = 3;
  options.chunk_size = 2;
  ASSERT_TRUE(Generate(options).ok());
  options.out_dir = c.path();
  options.threads = 0;  // All cores.
  options.chunk_size = 5;
  options.compress = true;  // Different bytes on disk, same arrays.
  ASSERT_TRUE(Generate(options).ok());
  EXPECT_EQ(DataFiles(a.path()), DataFiles(b.path()));
  for (const char* name : {"m_data", "q_data"}) {
    EXPECT_EQ(ReadArray(a / "mq_data.npz", name), ReadArray(c / "mq_data.npz", name)) << name;
  }
  EXPECT_EQ(ReadArray(a / "J_data.npz", "J_data"), ReadArray(c / "J_data.npz", "J_data"));
}

TEST(Generate, ResumesAfterAnInterruptionWithIdenticalResults) {
  ScratchDir reference, dir;
  ASSERT_TRUE(Generate(SmallOptions(reference.path(), 11)).ok());

  // Stop once the first chunk (4 samples) is saved, as Ctrl-C would.
  GenerateOptions options = SmallOptions(dir.path(), 11);
  bool stop = false;
  options.on_chunk_saved = [&stop](int64_t) { stop = true; };
  options.stop_requested = [&stop] { return stop; };
  const absl::StatusOr<GenerateReport> interrupted = Generate(options);
  ASSERT_EQ(interrupted.status().code(), absl::StatusCode::kCancelled) << interrupted.status();
  EXPECT_THAT(interrupted.status().message(), HasSubstr("4 of 11 samples saved"));
  EXPECT_THAT(interrupted.status().message(), HasSubstr("rerun the same command to resume"));
  EXPECT_FALSE(std::filesystem::exists(dir / "mq_data.npz"));
  EXPECT_FALSE(std::filesystem::exists(dir / "generate.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "partial/manifest.json"));
  EXPECT_EQ(ChunkFiles(dir.path()),
            std::vector<std::string>{"samples_000000000000-000000000004.npz"});

  // Rerun with another thread count: only the 7 missing samples are computed.
  std::vector<std::string> notes;
  GenerateOptions resume = SmallOptions(dir.path(), 11);
  resume.threads = 3;
  resume.log = [&notes](const std::string& note) { notes.push_back(note); };
  const absl::StatusOr<GenerateReport> resumed = Generate(resume);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->reused, 4);
  EXPECT_EQ(resumed->generated, 7);
  EXPECT_THAT(notes.front(), HasSubstr("resuming: 4 of 11 samples"));
  EXPECT_EQ(DataFiles(dir.path()), DataFiles(reference.path()));
  EXPECT_FALSE(std::filesystem::exists(dir / "partial"));
}

TEST(Generate, RefusesPartialDataFromOtherSettingsUnlessRestarted) {
  ScratchDir dir;
  GenerateOptions options = SmallOptions(dir.path(), 8);
  bool stop = false;
  options.on_chunk_saved = [&stop](int64_t) { stop = true; };
  options.stop_requested = [&stop] { return stop; };
  ASSERT_EQ(Generate(options).status().code(), absl::StatusCode::kCancelled);

  GenerateOptions other = SmallOptions(dir.path(), 8);
  other.seed = 18;
  const absl::StatusOr<GenerateReport> refused = Generate(other);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("--seed 17"));
  EXPECT_THAT(refused.status().message(), HasSubstr("--seed 18"));
  EXPECT_THAT(refused.status().message(), HasSubstr("--restart"));

  other.seed = 17;
  other.rank = 5;
  EXPECT_THAT(std::string(Generate(other).status().message()), HasSubstr("--rank 6"));

  other.restart = true;
  std::vector<std::string> notes;
  other.log = [&notes](const std::string& note) { notes.push_back(note); };
  const absl::StatusOr<GenerateReport> restarted = Generate(other);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(restarted->reused, 0);
  EXPECT_THAT(notes.front(), HasSubstr("--restart"));
}

TEST(Generate, ExtendsOrShrinksAKeptPartialRun) {
  ScratchDir reference, dir;
  ASSERT_TRUE(Generate(SmallOptions(reference.path(), 10)).ok());
  GenerateOptions options = SmallOptions(dir.path(), 6);
  options.keep_partial = true;
  ASSERT_TRUE(Generate(options).ok());
  options.samples = 10;
  const absl::StatusOr<GenerateReport> extended = Generate(options);
  ASSERT_TRUE(extended.ok()) << extended.status();
  EXPECT_EQ(extended->reused, 6);
  EXPECT_EQ(extended->generated, 4);
  EXPECT_EQ(DataFiles(dir.path()), DataFiles(reference.path()));

  // A prefix of the kept chunks needs no new samples.
  options.samples = 5;
  const absl::StatusOr<GenerateReport> shrunk = Generate(options);
  ASSERT_TRUE(shrunk.ok()) << shrunk.status();
  EXPECT_EQ(shrunk->generated, 0);
  const NpyArray m10 = ReadArray(reference / "mq_data.npz", "m_data");
  const NpyArray m5 = ReadArray(dir / "mq_data.npz", "m_data");
  ASSERT_EQ(m5.shape, (std::vector<int64_t>{5, 81}));
  EXPECT_TRUE(std::equal(m5.bytes.begin(), m5.bytes.end(), m10.bytes.begin()));
}

TEST(Generate, RegeneratesAnUnreadableChunk) {
  ScratchDir reference, dir;
  ASSERT_TRUE(Generate(SmallOptions(reference.path(), 8)).ok());
  GenerateOptions options = SmallOptions(dir.path(), 8);
  options.keep_partial = true;
  ASSERT_TRUE(Generate(options).ok());
  // Damage the first chunk (as a disk error might): it must be regenerated, not trusted.
  const std::string chunk = dir / ("partial/" + ChunkFiles(dir.path()).front());
  std::filesystem::resize_file(chunk, 100);
  std::vector<std::string> notes;
  options.log = [&notes](const std::string& note) { notes.push_back(note); };
  const absl::StatusOr<GenerateReport> report = Generate(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->generated, 4);
  ASSERT_FALSE(notes.empty());
  EXPECT_THAT(notes.front(), HasSubstr("ignoring unusable chunk"));
  EXPECT_EQ(DataFiles(dir.path()), DataFiles(reference.path()));
}

TEST(Generate, TruncatedSvdReconstructsTheJacobian) {
  ScratchDir dir;
  GenerateOptions options = SmallOptions(dir.path(), 4);
  options.rank = 50;  // d_Q: the SVD is complete.
  ASSERT_TRUE(Generate(options).ok());
  const NpyArray j = ReadArray(dir / "J_data.npz", "J_data");
  const NpyArray u = ReadArray(dir / "Jsvd_data.npz", "U_data");
  const NpyArray sigma = ReadArray(dir / "Jsvd_data.npz", "sigma_data");
  const NpyArray v = ReadArray(dir / "Jsvd_data.npz", "V_data");
  for (int64_t i = 0; i < 4; ++i) {
    const Eigen::MatrixXd jac =
        Eigen::Map<const RowMajorMatrix>(j.View<double>().data() + i * 50 * 81, 50, 81);
    const Eigen::MatrixXd ui =
        Eigen::Map<const RowMajorMatrix>(u.View<double>().data() + i * 50 * 50, 50, 50);
    const Eigen::VectorXd si =
        Eigen::Map<const Eigen::VectorXd>(sigma.View<double>().data() + i * 50, 50);
    const Eigen::MatrixXd vi =
        Eigen::Map<const RowMajorMatrix>(v.View<double>().data() + i * 81 * 50, 81, 50);
    EXPECT_LT((ui * si.asDiagonal() * vi.transpose() - jac).norm(), 1e-12 * jac.norm()) << i;

    // A rank-6 truncation is the best approximation: its error is the tail of the spectrum.
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(jac);
    const Eigen::VectorXd tail = svd.singularValues().tail(50 - 6);
    const Eigen::MatrixXd truncated =
        ui.leftCols(6) * si.head(6).asDiagonal() * vi.leftCols(6).transpose();
    EXPECT_NEAR((truncated - jac).norm(), tail.norm(), 1e-12 * jac.norm()) << i;
  }
}

TEST(Generate, RandomizedSvdOfFullRankIsExact) {
  ScratchDir full_dir, dir;
  GenerateOptions options = SmallOptions(full_dir.path(), 3);
  options.rank = 50;
  ASSERT_TRUE(Generate(options).ok());
  options.out_dir = dir.path();
  options.jacobian = JacobianOutput::kSvd;
  options.svd_method = SvdMethod::kRandomized;
  options.power_iterations = 0;
  ASSERT_TRUE(Generate(options).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "J_data.npz"));
  const std::vector<double> exact = ReadArray(full_dir / "Jsvd_data.npz", "sigma_data").ToDoubles();
  const std::vector<double> randomized = ReadArray(dir / "Jsvd_data.npz", "sigma_data").ToDoubles();
  ASSERT_EQ(exact.size(), randomized.size());
  for (size_t k = 0; k < exact.size(); ++k) {
    EXPECT_NEAR(randomized[k], exact[k], 1e-10 * exact[0]) << k;
  }
}

TEST(Generate, OutputsOnlyAndRemovesStaleJacobianFiles) {
  ScratchDir dir;
  ASSERT_TRUE(Generate(SmallOptions(dir.path(), 3)).ok());
  ASSERT_TRUE(std::filesystem::exists(dir / "J_data.npz"));
  GenerateOptions options = SmallOptions(dir.path(), 3);
  options.jacobian = JacobianOutput::kNone;
  std::vector<std::string> notes;
  options.log = [&notes](const std::string& note) { notes.push_back(note); };
  ASSERT_TRUE(Generate(options).ok());
  EXPECT_TRUE(std::filesystem::exists(dir / "mq_data.npz"));
  EXPECT_FALSE(std::filesystem::exists(dir / "J_data.npz"));
  EXPECT_FALSE(std::filesystem::exists(dir / "Jsvd_data.npz"));
  EXPECT_EQ(std::count_if(notes.begin(), notes.end(),
                          [](const std::string& note) {
                            return note.find("left by a run with another --jacobian") !=
                                   std::string::npos;
                          }),
            2);
  absl::StatusOr<NpzReader> reader = NpzReader::Open(dir / "mq_data.npz");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->names(), (std::vector<std::string>{"m_data", "q_data"}));
}

TEST(Generate, ReactionDiffusionProducesFiniteData) {
  ScratchDir dir;
  GenerateOptions options = SmallOptions(dir.path(), 3);
  options.problem = Problem::kReactionDiffusion;
  options.jacobian = JacobianOutput::kSvd;
  ASSERT_TRUE(Generate(options).ok());
  const NpyArray q = ReadArray(dir / "mq_data.npz", "q_data");
  for (double value : q.ToDoubles()) ASSERT_TRUE(std::isfinite(value));
}

TEST(Generate, RejectsBadOptionsNamingThem) {
  ScratchDir dir;
  GenerateOptions options = SmallOptions(dir.path(), 3);
  options.rank = 51;
  absl::Status status = Generate(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("--rank must be in [1, 50]"));
  options.rank = 6;
  options.samples = 0;
  EXPECT_THAT(std::string(Generate(options).status().message()), HasSubstr("--samples"));
  options.samples = 3;
  options.mesh = 1;
  EXPECT_THAT(std::string(Generate(options).status().message()), HasSubstr("--mesh"));
  options.mesh = 8;
  options.chunk_size = 0;
  EXPECT_THAT(std::string(Generate(options).status().message()), HasSubstr("--chunk-size"));
  options.chunk_size = 4;
  std::ofstream(dir / "file") << "x";
  options.out_dir = dir / "file";
  status = Generate(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("is not a directory"));
}

TEST(Generate, RefusesADirectoryLockedByAnotherRun) {
  ScratchDir dir;
  const int fd = open((dir / ".generate.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  const absl::Status status = Generate(SmallOptions(dir.path(), 2)).status();
  close(fd);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("another dino-train generate"));
  EXPECT_TRUE(Generate(SmallOptions(dir.path(), 2)).ok());
}

TEST(Generate, NumpyReadsTheFiles) {
  ScratchDir dir;
  ASSERT_TRUE(Generate(SmallOptions(dir.path(), 5)).ok());
  const std::string command =
      std::string(DINO_PYTHON) + " " + DINO_CHECK_NPZ_SCRIPT + " " + dir.path() + " 5 81 50 6";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

}  // namespace
}  // namespace dino::pipeline
