// The `dino` CLI's training helpers: token files, the dino / hIPPYflow data layout, batch
// slicing, chunk sizing and the progress / status formatting.
#include "client/cli/training_support.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/io/npz.h"
#include "tests/client/test_util.h"
#include "tests/common/file_contents.h"

namespace dino::cli {
namespace {

using client::SampleArrays;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::Ramp;
using testing::ScopedTempDir;
using testing::WriteFile;

TEST(TokenFileTest, TrimsSurroundingWhitespace) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/token";
  WriteFile(path, "abc.DEF-123\n");
  EXPECT_EQ(*ReadTokenFile(path), "abc.DEF-123");
  WriteFile(path, "abc \r\n\t\n");
  EXPECT_EQ(*ReadTokenFile(path), "abc");
  WriteFile(path, "\n  abc\n");
  EXPECT_EQ(*ReadTokenFile(path), "abc");
  WriteFile(path, "abc");
  EXPECT_EQ(*ReadTokenFile(path), "abc");
}

TEST(TokenFileTest, RejectsMissingEmptyAndMalformedFilesWithoutEchoingTheToken) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/token";
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kNotFound);
  WriteFile(path, " \n\n");
  absl::Status s = ReadTokenFile(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("is empty"));
  WriteFile(path, "two words\n");
  s = ReadTokenFile(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("words")));
  WriteFile(path, "line1\nline2\n");
  EXPECT_FALSE(ReadTokenFile(path).ok());
}

TEST(JacobianModeTest, Parses) {
  EXPECT_EQ(*ParseJacobianMode("auto"), JacobianMode::kAuto);
  EXPECT_EQ(*ParseJacobianMode("full"), JacobianMode::kFull);
  EXPECT_EQ(*ParseJacobianMode("svd"), JacobianMode::kSvd);
  EXPECT_EQ(*ParseJacobianMode("none"), JacobianMode::kNone);
  EXPECT_FALSE(ParseJacobianMode("reduced").ok());
}

// A data directory of n samples with d_M = 3, d_Q = 2, r = 2.
class DataDirTest : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 5;

  void Write(const std::string& file, const std::map<std::string, NpyArray>& arrays) {
    ASSERT_TRUE(WriteNpz(dir_.path() + "/" + file, arrays).ok());
  }
  void WriteMq() {
    Write("mq_data.npz", {{"m_data", Ramp({kN, 3}, NpyDType::kFloat64)},
                          {"q_data", Ramp({kN, 2}, NpyDType::kFloat32)}});
  }
  void WriteFull() { Write("J_data.npz", {{"J_data", Ramp({kN, 2, 3}, NpyDType::kFloat64)}}); }
  void WriteSvd() {
    Write("Jsvd_data.npz", {{"U_data", Ramp({kN, 2, 2}, NpyDType::kFloat64)},
                            {"sigma_data", Ramp({kN, 2}, NpyDType::kFloat64)},
                            {"V_data", Ramp({kN, 3, 2}, NpyDType::kFloat64)}});
  }

  ScopedTempDir dir_;
};

TEST_F(DataDirTest, AutoPrefersFullThenSvdThenNone) {
  WriteMq();
  absl::StatusOr<FineTuneData> none = LoadFineTuneData(dir_.path(), JacobianMode::kAuto);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->form, SampleArrays::JacobianForm::kNone);
  EXPECT_EQ(none->samples(), kN);
  EXPECT_EQ(none->q.dtype, NpyDType::kFloat32);  // Kept as stored.
  EXPECT_EQ(none->BytesPerSample(), 3 * 8 + 2 * 4);

  WriteSvd();
  absl::StatusOr<FineTuneData> svd = LoadFineTuneData(dir_.path(), JacobianMode::kAuto);
  ASSERT_TRUE(svd.ok()) << svd.status();
  EXPECT_EQ(svd->form, SampleArrays::JacobianForm::kSvd);
  EXPECT_THAT(svd->v.shape, ElementsAre(kN, 3, 2));
  EXPECT_EQ(svd->BytesPerSample(), (3 + 2 * 4 / 8 + 4 + 2 + 6) * 8);

  WriteFull();
  absl::StatusOr<FineTuneData> full = LoadFineTuneData(dir_.path(), JacobianMode::kAuto);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->form, SampleArrays::JacobianForm::kFull);
  EXPECT_THAT(full->jacobian.shape, ElementsAre(kN, 2, 3));
  // An explicit mode wins.
  EXPECT_EQ(LoadFineTuneData(dir_.path(), JacobianMode::kSvd)->form,
            SampleArrays::JacobianForm::kSvd);
  EXPECT_EQ(LoadFineTuneData(dir_.path(), JacobianMode::kNone)->form,
            SampleArrays::JacobianForm::kNone);
}

TEST_F(DataDirTest, CountKeepsTheFirstSamples) {
  WriteMq();
  WriteFull();
  absl::StatusOr<FineTuneData> data = LoadFineTuneData(dir_.path(), JacobianMode::kAuto, 2);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->samples(), 2);
  EXPECT_THAT(data->q.shape, ElementsAre(2, 2));
  EXPECT_THAT(data->jacobian.shape, ElementsAre(2, 2, 3));
  EXPECT_EQ(data->m.ToDoubles(), SliceRows(Ramp({kN, 3}, NpyDType::kFloat64), 0, 2)->ToDoubles());
  EXPECT_THAT(LoadFineTuneData(dir_.path(), JacobianMode::kAuto, 6).status().message(),
              HasSubstr("holds 5 samples; 6 were asked for"));
}

TEST_F(DataDirTest, ReportsMissingFilesAndInconsistentArrays) {
  EXPECT_EQ(LoadFineTuneData(dir_.path(), JacobianMode::kAuto).status().code(),
            absl::StatusCode::kNotFound);
  WriteMq();
  EXPECT_EQ(LoadFineTuneData(dir_.path(), JacobianMode::kFull).status().code(),
            absl::StatusCode::kNotFound);
  Write("J_data.npz", {{"J_data", Ramp({kN, 3, 2}, NpyDType::kFloat64)}});
  absl::Status s = LoadFineTuneData(dir_.path(), JacobianMode::kFull).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("J_data.npz: array 'J_data' has shape [5, 3, 2], but d_Q"));
  Write("J_data.npz", {{"J_data", Ramp({kN, 6}, NpyDType::kFloat64)}});
  EXPECT_THAT(LoadFineTuneData(dir_.path(), JacobianMode::kFull).status().message(),
              HasSubstr("must have shape [n, d_Q, d_M]"));
  Write("Jsvd_data.npz", {{"U_data", Ramp({kN, 2, 2}, NpyDType::kFloat64)},
                          {"sigma_data", Ramp({kN, 3}, NpyDType::kFloat64)},
                          {"V_data", Ramp({kN, 3, 2}, NpyDType::kFloat64)}});
  EXPECT_THAT(LoadFineTuneData(dir_.path(), JacobianMode::kSvd).status().message(),
              HasSubstr("'U_data' has shape [5, 2, 2], but r (sigma_data) is 3"));
  Write("mq_data.npz", {{"m_data", Ramp({kN, 3}, NpyDType::kFloat64)},
                        {"q_data", Ramp({kN + 1, 2}, NpyDType::kFloat64)}});
  EXPECT_THAT(LoadFineTuneData(dir_.path(), JacobianMode::kNone).status().message(),
              HasSubstr("'q_data' has shape [6, 2], but the number of samples n is 5"));
  Write("mq_data.npz", {{"m_data", Ramp({kN, 3}, NpyDType::kInt64)},
                        {"q_data", Ramp({kN, 2}, NpyDType::kFloat64)}});
  absl::StatusOr<FineTuneData> ints = LoadFineTuneData(dir_.path(), JacobianMode::kNone);
  ASSERT_TRUE(ints.ok()) << ints.status();
  EXPECT_EQ(ints->m.dtype, NpyDType::kFloat64);
  Write("mq_data.npz", {{"m_data", Ramp({kN, 3}, NpyDType::kFloat64)}});
  EXPECT_EQ(LoadFineTuneData(dir_.path(), JacobianMode::kNone).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DataDirTest, SlicesSamplesIntoBatches) {
  WriteMq();
  WriteSvd();
  absl::StatusOr<FineTuneData> data = LoadFineTuneData(dir_.path(), JacobianMode::kAuto);
  ASSERT_TRUE(data.ok()) << data.status();
  absl::StatusOr<SampleArrays> batch = SliceSamples(*data, 3, 5, /*validation=*/true);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_TRUE(batch->validation);
  EXPECT_EQ(batch->form, SampleArrays::JacobianForm::kSvd);
  EXPECT_THAT(batch->m.shape, ElementsAre(2, 3));
  EXPECT_THAT(batch->u.shape, ElementsAre(2, 2, 2));
  EXPECT_THAT(batch->sigma.shape, ElementsAre(2, 2));
  EXPECT_THAT(batch->v.shape, ElementsAre(2, 3, 2));
  const std::vector<double> all_v = data->v.ToDoubles();
  EXPECT_EQ(batch->v.ToDoubles(), std::vector<double>(all_v.begin() + 18, all_v.end()));
  EXPECT_EQ(batch->q.dtype, NpyDType::kFloat32);
  EXPECT_FALSE(SliceSamples(*data, 4, 6, false).ok());
}

TEST(SliceRowsTest, CopiesRowRanges) {
  const NpyArray a = Ramp({4, 2, 3}, NpyDType::kFloat32);
  absl::StatusOr<NpyArray> mid = SliceRows(a, 1, 3);
  ASSERT_TRUE(mid.ok());
  EXPECT_THAT(mid->shape, ElementsAre(2, 2, 3));
  EXPECT_EQ(mid->dtype, NpyDType::kFloat32);
  const std::vector<double> all = a.ToDoubles();
  EXPECT_EQ(mid->ToDoubles(), std::vector<double>(all.begin() + 6, all.begin() + 18));
  EXPECT_THAT(SliceRows(a, 2, 2)->shape, ElementsAre(0, 2, 3));
  EXPECT_TRUE(SliceRows(a, 0, 4)->ToDoubles() == all);
  EXPECT_FALSE(SliceRows(a, 3, 5).ok());
  EXPECT_FALSE(SliceRows(a, -1, 2).ok());
  EXPECT_FALSE(SliceRows(a, 3, 2).ok());
  EXPECT_FALSE(SliceRows(Ramp({}, NpyDType::kFloat64), 0, 0).ok());
}

TEST(ChunkSamplesTest, FillsTheBudgetWithAtLeastOneSample) {
  EXPECT_EQ(ChunkSamples(100, 1000), 10);
  EXPECT_EQ(ChunkSamples(300, 1000), 3);
  EXPECT_EQ(ChunkSamples(5000, 1000), 1);
  // The bundled model's full Jacobians: 50 x 4225 doubles (1.7 MB) per sample -> 2 per message.
  EXPECT_EQ(ChunkSamples((4225 + 50 + 50 * 4225) * 8), 2);
  EXPECT_EQ(ChunkSamples(1024), kDefaultChunkBytes / 1024);
  EXPECT_LT(kDefaultChunkBytes, 4 << 20);
  EXPECT_GE(ChunkSamples(0), 1);
}

TEST(FormatTest, SecondsAndBytes) {
  EXPECT_EQ(FormatSeconds(0), "0s");
  EXPECT_EQ(FormatSeconds(42.4), "42s");
  EXPECT_EQ(FormatSeconds(185), "3m05s");
  EXPECT_EQ(FormatSeconds(7380), "2h03m");
  EXPECT_EQ(FormatSeconds(3 * 86400 + 4 * 3600), "3d04h");
  EXPECT_EQ(FormatSeconds(-1), "?");
  EXPECT_EQ(FormatSeconds(std::nan("")), "?");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(2048), "2.0 KiB");
  EXPECT_EQ(FormatBytes(int64_t{12900} << 10), "12.6 MiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 29), "1.50 GiB");
}

TEST(FormatTest, UploadProgress) {
  client::UploadProgress p;
  p.samples = 512;
  p.bytes = int64_t{6} << 20;
  p.elapsed = absl::Seconds(2);
  EXPECT_EQ(FormatUploadProgress(p, 1024),
            "upload 512/1024 samples (50%), 6.0 MiB, 256 samples/s, 3.0 MiB/s, ETA 2s");
  p.samples = 1024;
  EXPECT_EQ(FormatUploadProgress(p, 1024),
            "upload 1024/1024 samples (100%), 6.0 MiB, 512 samples/s, 3.0 MiB/s");
  p.elapsed = absl::ZeroDuration();
  EXPECT_EQ(FormatUploadProgress(p, 1024), "upload 1024/1024 samples (100%), 6.0 MiB");
}

v1::JobStatus TrainingStatus() {
  v1::JobStatus s;
  s.set_job_id("job-7");
  s.mutable_base()->set_name("poisson");
  s.mutable_base()->set_version(2);
  s.set_state(v1::TRAINING);
  s.set_train_samples(800);
  s.set_validation_samples(200);
  s.set_samples_received(1000);
  s.set_bytes_received(3 << 20);
  s.set_epoch(12);
  s.set_epochs(100);
  s.set_train_loss(1.25e-3);
  s.set_validation_loss(2.5e-3);
  s.mutable_validation()->set_samples(200);
  s.mutable_validation()->set_l2(0.757);
  s.mutable_validation()->set_h1(0.1425);
  s.set_samples_per_second(12345);
  s.set_eta_seconds(185);
  s.set_revision(14);
  return s;
}

TEST(FormatTest, JobProgressLines) {
  v1::JobStatus s = TrainingStatus();
  EXPECT_EQ(FormatJobProgress(s),
            "TRAINING, epoch 12/100, loss train 0.00125 validation 0.0025, accuracy l2 0.7570 "
            "h1 0.1425, 12.3k samples/s, ETA 3m05s");
  v1::JobStatus q;
  q.set_state(v1::QUEUED);
  q.set_train_samples(8);
  q.set_validation_samples(2);
  q.set_epochs(3);
  EXPECT_EQ(FormatJobProgress(q), "QUEUED, 8 training + 2 validation samples");
  s.set_state(v1::REJECTED);
  s.set_message("validation gate: h1 0.12 < 0.14 - 0.01");
  EXPECT_THAT(FormatJobProgress(s), HasSubstr("REJECTED, epoch 12/100"));
  EXPECT_THAT(FormatJobProgress(s), HasSubstr(": validation gate: h1 0.12 < 0.14 - 0.01"));
  EXPECT_THAT(FormatJobProgress(s), Not(HasSubstr("ETA")));
}

TEST(FormatTest, JobSummaryAndTable) {
  v1::JobStatus s = TrainingStatus();
  s.set_state(v1::SUCCEEDED);
  s.set_new_version(3);
  s.set_epoch(100);
  s.mutable_base_validation()->set_l2(0.75);
  const std::string summary = FormatJobSummary(s);
  EXPECT_THAT(summary, HasSubstr("job:                job-7\n"));
  EXPECT_THAT(summary, HasSubstr("model:              poisson (base version 2)\n"));
  EXPECT_THAT(summary, HasSubstr("state:              SUCCEEDED\n"));
  EXPECT_THAT(summary, HasSubstr("new version:        3\n"));
  EXPECT_THAT(summary, HasSubstr("800 training, 200 validation (1000 received, 3.0 MiB)"));
  EXPECT_THAT(summary, HasSubstr("epochs:             100/100\n"));
  EXPECT_THAT(summary, HasSubstr("  l2                0.7500    0.7570"));
  EXPECT_THAT(summary, HasSubstr("  h1                -         0.1425"));

  v1::JobStatus other;
  other.set_job_id("job-8");
  other.mutable_base()->set_name("linear");
  other.mutable_base()->set_version(1);
  other.set_state(v1::FAILED);
  other.set_message(std::string(80, 'x'));
  const std::string table = FormatJobTable({s, other});
  EXPECT_THAT(table,
              HasSubstr("JOB    MODEL    BASE  STATE      EPOCH    SAMPLES  NEW  MESSAGE\n"));
  EXPECT_THAT(table, HasSubstr("job-7  poisson  2     SUCCEEDED  100/100  1000     3\n"));
  EXPECT_THAT(table, HasSubstr("job-8  linear   1     FAILED     -        0        -    xxx"));
  EXPECT_THAT(table, HasSubstr("x...\n"));
  EXPECT_EQ(FormatJobTable({}), "(no jobs)\n");
}

TEST(FormatTest, JobStatusJson) {
  v1::JobStatus s = TrainingStatus();
  s.set_validation_loss(std::nan(""));
  const nlohmann::json j = nlohmann::json::parse(JobStatusJson(s));
  EXPECT_EQ(j["job_id"], "job-7");
  EXPECT_EQ(j["base"]["name"], "poisson");
  EXPECT_EQ(j["base"]["version"], 2);
  EXPECT_EQ(j["state"], "TRAINING");
  EXPECT_EQ(j["epoch"], 12);
  EXPECT_EQ(j["bytes_received"], 3 << 20);
  EXPECT_DOUBLE_EQ(j["train_loss"].get<double>(), 1.25e-3);
  EXPECT_TRUE(j["validation_loss"].is_null());
  EXPECT_DOUBLE_EQ(j["validation"]["h1"].get<double>(), 0.1425);
  EXPECT_TRUE(j["validation"]["reduced_h1"].is_null());
  EXPECT_TRUE(j["base_validation"].is_null());
  EXPECT_EQ(j["revision"], 14);
  EXPECT_EQ(JobStatusJson(s, -1).find('\n'), std::string::npos);

  const nlohmann::json list = nlohmann::json::parse(JobListJson({s, s}));
  ASSERT_EQ(list["jobs"].size(), 2u);
  EXPECT_EQ(list["jobs"][1]["job_id"], "job-7");
  EXPECT_EQ(nlohmann::json::parse(JobListJson({}))["jobs"].size(), 0u);
}

TEST(ProgressPrinterTest, LinesWhenNotATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressPrinter printer(f, /*tty=*/false, absl::ZeroDuration(), absl::Hours(1));
    printer.Update("a");
    printer.Update("b");  // Throttled.
    printer.Update("c", /*force=*/true);
    printer.Update("c", /*force=*/true);  // Same line again: skipped.
  }
  EXPECT_EQ(::dino::testing::Contents(f), "a\nc\n");
  std::fclose(f);
}

TEST(ProgressPrinterTest, OverwritesOnATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressPrinter printer(f, /*tty=*/true, absl::ZeroDuration(), absl::Hours(1));
    printer.Update("one");
    printer.Update("two");
    printer.Finish();
    printer.Update("three");
  }
  EXPECT_EQ(::dino::testing::Contents(f), "\rone\033[K\rtwo\033[K\n\rthree\033[K\n");
  std::fclose(f);
}

}  // namespace
}  // namespace dino::cli
