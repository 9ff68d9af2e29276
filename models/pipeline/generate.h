// `dino-train generate`: training data (paper §2, (2.3)) for the problems of §3.1 written to a
// data directory in hIPPYflow's layout (see files.h).
//
// Determinism. Sample i depends only on (seed, i) (dino::pde::GenerateSample draws its prior
// noise and sketch from NormalRng streams 2i and 2i + 1), each sample is computed by one
// thread with its own model, and results land in slot i. The files are therefore byte-for-byte
// the same for any thread count, chunk size or sequence of interruptions and resumptions.
//
// Resumption. Samples are generated in chunks of `chunk_size` and each finished chunk is saved
// atomically as partial/samples_<start>-<end>.npz (12-digit zero-padded sample indices, end
// exclusive), next to partial/manifest.json, which records everything the samples depend on
// (problem, mesh, seed, Jacobian form and SVD settings). A rerun with the same settings reuses
// every saved sample and generates only the missing ones; a rerun with different settings is
// refused (naming the differing setting) unless `restart` discards the partial data. When a
// run is stopped (stop_requested, e.g. Ctrl-C) the finished leading samples of the current
// chunk are saved too, so at most one sample per thread is lost. Once all samples exist the
// final files are assembled from the chunks (each written to a temporary file and renamed),
// generate.json is written last, and partial/ is removed (unless keep_partial).
//
// Jacobian forms (`jacobian`):
//  * kNone: mq_data.npz only.
//  * kSvd:  also Jsvd_data.npz with the rank-r truncated SVD of each ∇q: exact (from the full
//           Jacobian, d_Q adjoint solves and a dense SVD; the default, exact and cheaper than a
//           randomized SVD of comparable accuracy for d_Q = 50) or randomized (O(r) Jacobian
//           actions, for large d_Q).
//  * kFull: also J_data.npz with the full ∇q, and Jsvd_data.npz from its exact SVD.
#ifndef DINO_MODELS_PIPELINE_GENERATE_H_
#define DINO_MODELS_PIPELINE_GENERATE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/pipeline/problems.h"
#include "models/pipeline/progress.h"

namespace dino::pipeline {

enum class JacobianOutput { kNone, kSvd, kFull };
enum class SvdMethod { kExact, kRandomized };

// "none" / "svd" / "full" and "exact" / "randomized".
const char* JacobianOutputName(JacobianOutput output);
absl::StatusOr<JacobianOutput> ParseJacobianOutput(absl::string_view name);
const char* SvdMethodName(SvdMethod method);
absl::StatusOr<SvdMethod> ParseSvdMethod(absl::string_view name);

// The number of CPUs this process may run on (its affinity mask), at least 1.
int AvailableCores();

struct GenerateOptions {
  Problem problem = Problem::kPoisson;
  int64_t samples = 0;  // n ≥ 1
  std::string out_dir;  // Created if missing.
  uint64_t seed = 0;
  int mesh = 64;  // n × n squares, d_M = (n + 1)²
  JacobianOutput jacobian = JacobianOutput::kSvd;
  int rank = 20;  // r of the truncated SVD, 1 ≤ r ≤ min(d_Q, d_M)
  SvdMethod svd_method = SvdMethod::kExact;
  int oversampling = 10;      // Randomized SVD only.
  int power_iterations = 2;   // Randomized SVD only (see models/pde/README.md).
  int threads = 0;            // 0: AvailableCores().
  int64_t chunk_size = 256;   // Samples per saved chunk.
  bool compress = false;      // Deflate the final .npz files (as numpy.savez_compressed).
  bool restart = false;       // Discard partial/ instead of resuming from it.
  bool keep_partial = false;  // Keep partial/ after a complete run (to extend it later).
  ProgressStyle progress = ProgressStyle::kAuto;
  // Polled while samples are generated; once it returns true, finished samples are saved and
  // Generate returns a Cancelled status saying how to resume.
  std::function<bool()> stop_requested;
  // Called after each chunk is saved with the number of samples saved so far (for tests).
  std::function<void(int64_t)> on_chunk_saved;
  // Notes for the user (reused samples, removed stale files); ignored when empty.
  std::function<void(const std::string&)> log;
};

struct GenerateReport {
  int64_t samples = 0;
  int64_t generated = 0;  // Computed by this run.
  int64_t reused = 0;     // Taken from partial/.
  int64_t parameter_dim = 0;
  int64_t observation_dim = 0;
  int threads = 0;
  double wall_seconds = 0.0;
  // Mean time to compute one sample (solve, Jacobian, SVD) on one thread, over the samples of
  // this run; 0 when all were reused.
  double seconds_per_sample = 0.0;
  std::vector<std::string> files;  // Data files written (paths), generate.json last.
};

// Generates the data set. Errors: InvalidArgument for bad options (naming the option),
// FailedPrecondition for partial data from other settings, Cancelled when stopped, and I/O or
// solver failures naming the file or the sample index.
absl::StatusOr<GenerateReport> Generate(const GenerateOptions& options);

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_GENERATE_H_
