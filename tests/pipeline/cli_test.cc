// The dino-train executable end to end: generate and bases on a small problem, exit codes and
// error messages, and resumption after SIGINT.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tests/pipeline/test_util.h"

namespace dino::pipeline {
namespace {

using test_util::FileContents;
using test_util::ScratchDir;
using ::testing::HasSubstr;

struct CommandResult {
  int exit_code = -1;
  std::string stdout_text;
  std::string stderr_text;
};

// Runs dino-train with `args` (shell words), capturing both streams.
CommandResult DinoTrain(const std::string& args, const ScratchDir& scratch) {
  const std::string out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  const std::string command =
      std::string(DINO_TRAIN_BINARY) + " " + args + " > " + out + " 2> " + err;
  const int status = std::system(command.c_str());
  CommandResult run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.stdout_text = FileContents(out);
  run.stderr_text = FileContents(err);
  return run;
}

// Starts dino-train with `args` (shell words, redirections included) in a child process, to be
// interrupted by the test.
pid_t SpawnDinoTrain(const std::string& args) {
  const pid_t child = fork();
  if (child == 0) {
    const std::string command = "exec " + std::string(DINO_TRAIN_BINARY) + " " + args;
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return child;
}

TEST(DinoTrain, GeneratesDataAndBases) {
  ScratchDir scratch;
  const std::string data = scratch / "data";
  CommandResult run = DinoTrain(
      "generate --problem poisson --samples 6 --mesh 8 --jacobian full --rank 8 "
      "--threads 2 --chunk-size 4 --seed 3 --out " +
          data,
      scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_THAT(run.stdout_text, HasSubstr("generated 6 samples (0 reused), d_M = 81, d_Q = 50"));
  EXPECT_THAT(run.stdout_text, HasSubstr(data + "/J_data.npz"));
  // Not a terminal: plain progress lines, no carriage returns.
  EXPECT_THAT(run.stderr_text, HasSubstr("generate: 6/6 samples  100.0%"));
  EXPECT_EQ(run.stderr_text.find('\r'), std::string::npos);

  run = DinoTrain("bases --data " + data + " --input-rank 12 --output-rank 20", scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_THAT(run.stdout_text, HasSubstr("r_M = 12, r_Q = 20"));
  EXPECT_THAT(run.stdout_text, HasSubstr("active_subspace, output_derivative, pod, kle"));
  for (const char* file : {"bases.npz", "spectra.csv", "bases.json"}) {
    EXPECT_TRUE(std::filesystem::exists(data + "/" + file)) << file;
  }
}

// fit, then an L-BFGS finish that continues from the model file, with an independent test set
// whose accuracies (and the bases' ceiling) land in the metadata.
TEST(DinoTrain, FitsThenFinishesWithLbfgsFromTheModelFile) {
  ScratchDir scratch;
  const std::string train = scratch / "train", test = scratch / "test";
  for (const auto& [dir, seed, samples] : {std::tuple(train, 1, 48), std::tuple(test, 2, 16)}) {
    CommandResult run =
        DinoTrain("generate --problem poisson --samples " + std::to_string(samples) +
                      " --mesh 8 --rank 10 --seed " + std::to_string(seed) + " --out " + dir,
                  scratch);
    ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  }
  CommandResult run =
      DinoTrain("bases --data " + train + " --input-rank 8 --output-rank 10 --no-kle", scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  const std::string adam = scratch / "adam.pt", finished = scratch / "finished.pt";
  run = DinoTrain("fit --data " + train + " --hidden 8,8 --epochs 3 --progress none --out " + adam,
                  scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;

  const std::string report = scratch / "report.json";
  run = DinoTrain("fit --data " + train + " --init-model " + adam +
                      " --epochs 0 --lbfgs-iterations 6 --lbfgs-report-interval 3 --test-data " +
                      test + " --progress lines --metrics-json " + report + " --out " + finished,
                  scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_THAT(run.stderr_text, HasSubstr("L-BFGS 3 iterations"));
  EXPECT_THAT(run.stderr_text, HasSubstr("L-BFGS 6 iterations"));
  EXPECT_THAT(run.stderr_text, HasSubstr("test: L2 accuracy"));
  EXPECT_THAT(run.stderr_text, HasSubstr("basis ceiling: H1"));
  const std::string metadata = FileContents(report);
  EXPECT_THAT(metadata, HasSubstr("\"initial_model\""));
  EXPECT_THAT(metadata, HasSubstr(adam));
  EXPECT_THAT(metadata, HasSubstr("\"lbfgs_iterations\": 6"));
  EXPECT_THAT(metadata, HasSubstr("\"basis_h1_accuracy\""));
  EXPECT_THAT(metadata, HasSubstr("\"test\": {"));
  EXPECT_THAT(metadata, HasSubstr("\"hidden_widths\": [\n    8,\n    8\n  ]"));

  run = DinoTrain("evaluate --data " + test + " --model " + finished, scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_THAT(run.stdout_text, HasSubstr("\"basis_h1_accuracy\""));

  // A third stage: its metadata holds every stage's command, the newest outermost.
  const std::string third_report = scratch / "third.json";
  run = DinoTrain("fit --data " + train + " --init-model " + finished +
                      " --epochs 1 --progress none --metrics-json " + third_report + " --out " +
                      (scratch / "third.pt"),
                  scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  const nlohmann::json third = nlohmann::json::parse(FileContents(third_report));
  const auto argv_of = [](const nlohmann::json& stage) {
    return stage.at("command").at("argv").get<std::vector<std::string>>();
  };
  EXPECT_EQ(argv_of(third).back(), scratch / "third.pt");
  EXPECT_EQ(third["command"]["cwd"], std::filesystem::current_path().string());
  const nlohmann::json& second = third.at("initial_model");
  EXPECT_EQ(second["file"], finished);
  EXPECT_THAT(argv_of(second), ::testing::Contains("--lbfgs-iterations"));
  const nlohmann::json& first = second.at("initial_model");
  EXPECT_EQ(first["file"], adam);
  EXPECT_EQ(argv_of(first).back(), adam);
  EXPECT_EQ(first["training"]["epochs"], 3);
  EXPECT_FALSE(first.contains("initial_model"));

  run = DinoTrain("fit --data " + train + " --init-model " + adam +
                      " --dtype fp32 --epochs 0 --lbfgs-iterations 1 --out " + finished,
                  scratch);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text,
              HasSubstr("--dtype fp32 does not match the weights of --init-model"));
}

TEST(DinoTrain, ReportsUsageAndDataErrors) {
  ScratchDir scratch;
  CommandResult run =
      DinoTrain("generate --problem heat --samples 2 --out " + (scratch / "d"), scratch);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.stderr_text, HasSubstr("--problem"));
  EXPECT_THAT(run.stderr_text, HasSubstr("heat"));

  run = DinoTrain(
      "generate --problem poisson --samples 2 --mesh 8 --rank 60 --out " + (scratch / "d"),
      scratch);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text, HasSubstr("dino-train generate: error: --rank must be in [1, 50]"));

  run = DinoTrain("bases --data " + (scratch / "nothing"), scratch);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text, HasSubstr("dino-train bases: error: "));
  EXPECT_THAT(run.stderr_text, HasSubstr(scratch / "nothing/mq_data.npz"));

  run = DinoTrain("", scratch);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.stderr_text + run.stdout_text, HasSubstr("subcommand"));
}

TEST(DinoTrain, ResumesAfterSigint) {
  ScratchDir scratch;
  const std::string data = scratch / "data";
  // Enough work (reaction–diffusion, 24² mesh, one thread) that SIGINT arrives mid-run.
  const std::string args =
      "generate --problem reaction_diffusion --samples 200 --mesh 24 "
      "--jacobian svd --rank 5 --chunk-size 16 --out " +
      data;
  const pid_t child = SpawnDinoTrain(args + " --threads 1 > " + (scratch / "out1.txt") + " 2> " +
                                     (scratch / "err1.txt"));
  ASSERT_GE(child, 0);
  // Wait for the first chunk, then interrupt.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool chunk_seen = false;
  while (!chunk_seen && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(data + "/partial", ec)) {
      if (entry.path().filename().string().rfind("samples_", 0) == 0) chunk_seen = true;
    }
  }
  ASSERT_TRUE(chunk_seen) << FileContents(scratch / "err1.txt");
  kill(child, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    // Interrupted (the usual case): exit code 130 and a message on how to resume.
    ASSERT_TRUE(WIFEXITED(status)) << "killed by a signal instead of stopping cleanly";
    EXPECT_EQ(WEXITSTATUS(status), 130);
    EXPECT_THAT(FileContents(scratch / "err1.txt"), HasSubstr("rerun the same command"));
    EXPECT_FALSE(std::filesystem::exists(data + "/mq_data.npz"));
  }
  const CommandResult resumed = DinoTrain(args + " --threads 2 --progress none", scratch);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_text;
  EXPECT_THAT(resumed.stdout_text, HasSubstr("generated 200 samples"));
  EXPECT_THAT(resumed.stderr_text, HasSubstr("resuming:"));
  // Same bytes as one uninterrupted run.
  ScratchDir other;
  const std::string args2 =
      "generate --problem reaction_diffusion --samples 200 --mesh 24 "
      "--jacobian svd --rank 5 --threads 2 --progress none --out " +
      (other / "data");
  ASSERT_EQ(DinoTrain(args2, other).exit_code, 0);
  EXPECT_EQ(FileContents(data + "/mq_data.npz"), FileContents(other / "data/mq_data.npz"));
  EXPECT_EQ(FileContents(data + "/Jsvd_data.npz"), FileContents(other / "data/Jsvd_data.npz"));
}

// fit --checkpoint stopped by SIGINT after some epoch, then the same command with --resume:
// the model it ends with evaluates exactly like that of one uninterrupted run (same weights);
// a resume with other settings, or without --checkpoint, is refused naming what differs.
TEST(DinoTrain, FitResumesFromItsCheckpointExactly) {
  ScratchDir scratch;
  const std::string data = scratch / "data";
  ASSERT_EQ(DinoTrain("generate --problem poisson --samples 64 --mesh 8 --rank 10 --seed 1 "
                      "--out " +
                          data,
                      scratch)
                .exit_code,
            0);
  ASSERT_EQ(DinoTrain("bases --data " + data + " --input-rank 8 --output-rank 10 --no-kle", scratch)
                .exit_code,
            0);
  auto fit_with = [&](const std::string& learning_rate) {
    return "fit --data " + data + " --hidden 16,16 --epochs 200 --batch-size 8 --learning-rate " +
           learning_rate +
           " --schedule cosine --final-learning-rate 1e-4 --seed 5 --threads 1 --progress none "
           "--evaluation-interval 0 ";
  };
  const std::string fit = fit_with("3e-3");
  const std::string checkpoint = scratch / "checkpoint.pt";
  const pid_t child = SpawnDinoTrain(fit + "--checkpoint " + checkpoint + " --out " +
                                     (scratch / "stopped.pt") + " 2> " + (scratch / "err1.txt"));
  ASSERT_GE(child, 0);
  // Interrupt once the first epochs are checkpointed.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!std::filesystem::exists(checkpoint + ".state") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(std::filesystem::exists(checkpoint + ".state")) << FileContents(scratch / "err1.txt");
  kill(child, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << FileContents(scratch / "err1.txt");
  const bool interrupted =
      FileContents(scratch / "err1.txt").find("stopping on request") != std::string::npos;

  CommandResult run = DinoTrain(
      fit_with("1e-3") + "--checkpoint " + checkpoint + " --resume --out " + (scratch / "other.pt"),
      scratch);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text, HasSubstr("is of a run with other settings or data"));
  EXPECT_THAT(run.stderr_text, HasSubstr("learning_rate"));
  run = DinoTrain(fit + "--resume --out " + (scratch / "other.pt"), scratch);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.stderr_text, HasSubstr("--resume needs --checkpoint"));

  const std::string resumed = scratch / "resumed.pt", whole = scratch / "whole.pt";
  const std::string resumed_report = scratch / "resumed.json";
  run = DinoTrain(fit + "--checkpoint " + checkpoint + " --resume --metrics-json " +
                      resumed_report + " --out " + resumed,
                  scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  if (interrupted) {
    EXPECT_THAT(run.stderr_text, HasSubstr("resuming after epoch "));
    // The metadata names the interrupted run's command and the one that finished it.
    const nlohmann::json metadata = nlohmann::json::parse(FileContents(resumed_report));
    const auto argv = metadata["command"]["argv"].get<std::vector<std::string>>();
    EXPECT_THAT(argv, ::testing::Not(::testing::Contains("--resume")));
    EXPECT_THAT(metadata["resume_command"]["argv"].get<std::vector<std::string>>(),
                ::testing::Contains("--resume"));
  }
  run = DinoTrain(fit + "--out " + whole, scratch);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  const CommandResult resumed_metrics =
      DinoTrain("evaluate --data " + data + " --model " + resumed, scratch);
  const CommandResult whole_metrics =
      DinoTrain("evaluate --data " + data + " --model " + whole, scratch);
  ASSERT_EQ(resumed_metrics.exit_code, 0) << resumed_metrics.stderr_text;
  EXPECT_THAT(whole_metrics.stdout_text, HasSubstr("h1_accuracy"));
  // The accuracies, full precision, without the line naming the model file.
  auto accuracies = [](const std::string& text) {
    std::string kept, line;
    std::istringstream lines(text);
    while (std::getline(lines, line)) {
      if (line.find("\"model_file\"") == std::string::npos) kept += line + "\n";
    }
    return kept;
  };
  EXPECT_EQ(accuracies(resumed_metrics.stdout_text), accuracies(whole_metrics.stdout_text));
  if (interrupted) {
    const CommandResult stopped_metrics =
        DinoTrain("evaluate --data " + data + " --model " + (scratch / "stopped.pt"), scratch);
    EXPECT_NE(accuracies(stopped_metrics.stdout_text), accuracies(whole_metrics.stdout_text));
  }
}

}  // namespace
}  // namespace dino::pipeline
