#include "models/pipeline/generate.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/io/npz.h"
#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/randomized_svd.h"
#include "models/pde/sample.h"
#include "models/pipeline/files.h"

namespace dino::pipeline {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Clock = std::chrono::steady_clock;

constexpr int kFormatVersion = 1;
constexpr char kManifestFile[] = "manifest.json";
constexpr char kLockFile[] = ".generate.lock";
constexpr char kChunkPrefix[] = "samples_";
constexpr char kChunkSuffix[] = ".npz";
constexpr int kChunkDigits = 12;

// One array of the data set: its name and the shape of one sample's slice.
struct ArraySpec {
  const char* name;
  std::vector<int64_t> sample_shape;
  int64_t sample_elements() const {
    int64_t count = 1;
    for (int64_t d : sample_shape) count *= d;
    return count;
  }
  std::vector<int64_t> shape(int64_t n) const {
    std::vector<int64_t> full{n};
    full.insert(full.end(), sample_shape.begin(), sample_shape.end());
    return full;
  }
};

struct Dims {
  int64_t d_m = 0;
  int64_t d_q = 0;
  int64_t rank = 0;
};

// The arrays each chunk holds (those of all final files).
std::vector<ArraySpec> ArraySpecs(JacobianOutput jacobian, const Dims& dims) {
  std::vector<ArraySpec> specs = {{kMData, {dims.d_m}}, {kQData, {dims.d_q}}};
  if (jacobian != JacobianOutput::kNone) {
    specs.push_back({kUData, {dims.d_q, dims.rank}});
    specs.push_back({kSigmaData, {dims.rank}});
    specs.push_back({kVData, {dims.d_m, dims.rank}});
  }
  if (jacobian == JacobianOutput::kFull) specs.push_back({kJData, {dims.d_q, dims.d_m}});
  return specs;
}

struct OutputFile {
  const char* file;
  std::vector<const char*> arrays;
};

std::vector<OutputFile> OutputFiles(JacobianOutput jacobian) {
  std::vector<OutputFile> files = {{kMqFile, {kMData, kQData}}};
  if (jacobian != JacobianOutput::kNone) {
    files.push_back({kJsvdFile, {kUData, kSigmaData, kVData}});
  }
  if (jacobian == JacobianOutput::kFull) files.push_back({kJacobianFile, {kJData}});
  return files;
}

// Everything a sample's values depend on. Chunks are only reused under an equal manifest.
nlohmann::json Manifest(const GenerateOptions& options, const Dims& dims) {
  nlohmann::json manifest = {
      {"format", kFormatVersion},
      {"problem", ProblemName(options.problem)},
      {"mesh", options.mesh},
      {"seed", options.seed},
      {"parameter_dim", dims.d_m},
      {"observation_dim", dims.d_q},
      {"jacobian", JacobianOutputName(options.jacobian)},
  };
  if (options.jacobian != JacobianOutput::kNone) manifest["rank"] = options.rank;
  if (options.jacobian == JacobianOutput::kSvd) {
    manifest["svd_method"] = SvdMethodName(options.svd_method);
    if (options.svd_method == SvdMethod::kRandomized) {
      manifest["oversampling"] = options.oversampling;
      manifest["power_iterations"] = options.power_iterations;
    }
  }
  return manifest;
}

// The command-line spelling of a manifest key, for messages.
std::string OptionName(const std::string& key) {
  if (key == "svd_method") return "--svd";
  if (key == "power_iterations") return "--power-iterations";
  if (key == "parameter_dim" || key == "observation_dim") return key;
  return "--" + key;
}

absl::Status CheckManifest(const nlohmann::json& found, const nlohmann::json& expected,
                           const std::string& path) {
  if (!found.is_object()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a JSON object; remove the partial data or pass --restart"));
  }
  std::vector<std::string> keys;
  for (const auto& [key, value] : expected.items()) keys.push_back(key);
  for (const auto& [key, value] : found.items()) {
    if (!expected.contains(key)) keys.push_back(key);
  }
  for (const std::string& key : keys) {
    const std::string before = found.contains(key) ? found[key].dump() : "(unset)";
    const std::string now = expected.contains(key) ? expected[key].dump() : "(unset)";
    if (before != now) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the partial data in ", path, " was generated with ", OptionName(key), " ", before,
          ", but this run has ", OptionName(key), " ", now,
          "; rerun with the same settings to resume, or pass --restart to discard it"));
    }
  }
  return absl::OkStatus();
}

std::string ChunkName(int64_t begin, int64_t end) {
  return absl::StrFormat("%s%0*d-%0*d%s", kChunkPrefix, kChunkDigits, begin, kChunkDigits, end,
                         kChunkSuffix);
}

bool ParseChunkName(const std::string& name, int64_t* begin, int64_t* end) {
  const size_t prefix = sizeof(kChunkPrefix) - 1, suffix = sizeof(kChunkSuffix) - 1;
  if (name.size() != prefix + 2 * kChunkDigits + 1 + suffix ||
      !absl::StartsWith(name, kChunkPrefix) || !absl::EndsWith(name, kChunkSuffix) ||
      name[prefix + kChunkDigits] != '-') {
    return false;
  }
  const std::string first = name.substr(prefix, kChunkDigits);
  const std::string second = name.substr(prefix + kChunkDigits + 1, kChunkDigits);
  auto digits = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return digits(first) && digits(second) && absl::SimpleAtoi(first, begin) &&
         absl::SimpleAtoi(second, end) && *begin < *end;
}

struct Chunk {
  int64_t begin = 0;
  int64_t end = 0;
  std::string path;
};

// Rows [begin, end) of the data set come from `chunk`.
struct Segment {
  int64_t begin = 0;
  int64_t end = 0;
  Chunk chunk;
};

void Log(const GenerateOptions& options, const std::string& message) {
  if (options.log) options.log(message);
}

// An exclusive advisory lock on the output directory, held for the whole run, so that two
// runs cannot write the same chunks (and a run may delete stale temporary files).
class DirectoryLock {
 public:
  static absl::StatusOr<DirectoryLock> Acquire(const std::string& dir) {
    const std::string path = JoinPath(dir, kLockFile);
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      close(fd);
      if (error == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat("another dino-train generate is writing ",
                                                          dir, " (", path, " is locked)"));
      }
      return absl::ErrnoToStatus(error, absl::StrCat("cannot lock ", path));
    }
    return DirectoryLock(fd);
  }
  DirectoryLock(DirectoryLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  DirectoryLock& operator=(DirectoryLock&&) = delete;
  ~DirectoryLock() {
    if (fd_ >= 0) close(fd_);  // Releases the lock.
  }

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_;
};

// Removes temporary files that an interrupted writer left behind (".<name>.tmp-<pid>"); safe
// under the directory lock, since no other writer can be active.
absl::Status RemoveStaleTemporaries(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    if (absl::StartsWith(name, ".") && absl::StrContains(name, ".tmp-")) {
      absl::Status removed = RemovePath(JoinPath(dir, name));
      if (!removed.ok()) return removed;
    }
  }
  return absl::OkStatus();
}

// The usable chunks of `partial_dir`. A chunk whose directory entry or small arrays are
// unreadable (a disk error; writes are atomic, so never a half-written chunk) is removed with
// a note and regenerated.
absl::StatusOr<std::vector<Chunk>> ScanChunks(const std::string& partial_dir,
                                              const std::vector<ArraySpec>& specs,
                                              const GenerateOptions& options) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(partial_dir);
  if (!names.ok()) return names.status();
  std::vector<Chunk> chunks;
  for (const std::string& name : *names) {
    Chunk chunk;
    if (!ParseChunkName(name, &chunk.begin, &chunk.end)) continue;
    chunk.path = JoinPath(partial_dir, name);
    absl::Status status;
    absl::StatusOr<NpzReader> reader = NpzReader::Open(chunk.path);
    if (!reader.ok()) status = reader.status();
    for (const ArraySpec& spec : specs) {
      if (!status.ok()) break;
      if (!reader->contains(spec.name)) {
        status = absl::InvalidArgumentError(absl::StrCat("it has no array '", spec.name, "'"));
      } else if (absl::string_view(spec.name) == kMData || absl::string_view(spec.name) == kQData) {
        status = ReadFloat64Array(*reader, spec.name, spec.shape(chunk.end - chunk.begin)).status();
      }
    }
    if (!status.ok()) {
      Log(options, absl::StrCat("ignoring unusable chunk ", chunk.path, " (", status.message(),
                                "); its samples will be regenerated"));
      absl::Status removed = RemovePath(chunk.path);
      if (!removed.ok()) return removed;
      continue;
    }
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

// Covers [0, n) with saved chunks where possible, preferring the chunk that reaches furthest;
// the rest are the gaps to generate.
void PlanCoverage(const std::vector<Chunk>& chunks, int64_t n, std::vector<Segment>* segments,
                  std::vector<std::pair<int64_t, int64_t>>* gaps) {
  int64_t cursor = 0;
  while (cursor < n) {
    const Chunk* best = nullptr;
    int64_t next_start = n;
    for (const Chunk& chunk : chunks) {
      if (chunk.begin <= cursor && cursor < chunk.end) {
        if (best == nullptr || chunk.end > best->end) best = &chunk;
      } else if (chunk.begin > cursor) {
        next_start = std::min(next_start, chunk.begin);
      }
    }
    if (best != nullptr) {
      const int64_t end = std::min(best->end, n);
      segments->push_back({cursor, end, *best});
      cursor = end;
    } else {
      gaps->emplace_back(cursor, next_start);
      cursor = next_start;
    }
  }
}

// Per-run state shared by the chunks: one model per thread (LogDiffusionModel is not
// thread-safe) and the prior (const methods are).
struct Workers {
  std::vector<std::unique_ptr<pde::LogDiffusionModel>> models;
  std::unique_ptr<pde::BiLaplacianPrior> prior;
  pde::JacobianOptions jacobian;
};

struct PieceOutcome {
  int64_t saved = 0;  // Leading samples of the piece that were saved.
  std::vector<double> seconds;
  bool stopped = false;
  absl::Status error;
};

absl::Status SaveChunk(const std::string& partial_dir, int64_t begin,
                       const std::vector<ArraySpec>& specs, std::vector<NpyArray>& buffers,
                       int64_t count) {
  for (size_t a = 0; a < specs.size(); ++a) {
    // Row-major: the first `count` samples are a prefix of the buffer.
    buffers[a].shape[0] = count;
    buffers[a].bytes.resize(static_cast<size_t>(count * specs[a].sample_elements()) *
                            sizeof(double));
  }
  absl::StatusOr<AtomicNpzWriter> writer =
      AtomicNpzWriter::Create(JoinPath(partial_dir, ChunkName(begin, begin + count)));
  if (!writer.ok()) return writer.status();
  for (size_t a = 0; a < specs.size(); ++a) {
    absl::Status added = writer->Add(specs[a].name, buffers[a]);
    if (!added.ok()) return added;
  }
  return writer->Commit();
}

// Generates samples [begin, end) on the workers' threads and saves them as one chunk (or, when
// stopped or failed, the finished leading samples).
PieceOutcome GeneratePiece(const GenerateOptions& options, const Dims& dims,
                           const std::vector<ArraySpec>& specs, Workers& workers,
                           const std::string& partial_dir, int64_t begin, int64_t end,
                           ProgressReporter& progress, int64_t done_before) {
  const int64_t count = end - begin;
  std::vector<NpyArray> buffers;
  std::vector<double*> data;
  for (const ArraySpec& spec : specs) {
    absl::StatusOr<NpyArray> buffer = NpyArray::Zeros(spec.shape(count), NpyDType::kFloat64);
    if (!buffer.ok()) return {0, {}, false, buffer.status()};
    buffers.push_back(*std::move(buffer));
    data.push_back(buffers.back().MutableView<double>().data());
  }
  auto slot = [&](const char* name, int64_t k) {
    for (size_t a = 0; a < specs.size(); ++a) {
      if (absl::string_view(specs[a].name) == name) {
        return data[a] + k * specs[a].sample_elements();
      }
    }
    return static_cast<double*>(nullptr);
  };

  PieceOutcome outcome;
  outcome.seconds.assign(count, 0.0);
  std::vector<char> finished(count, 0);
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> completed{0};
  std::atomic<bool> halt{false};
  std::mutex mutex;
  std::condition_variable wake;
  int exited = 0;
  int64_t failed_index = std::numeric_limits<int64_t>::max();
  std::string failure;

  const int threads = static_cast<int>(std::min<int64_t>(workers.models.size(), count));
  auto work = [&](int t) {
    pde::LogDiffusionModel& model = *workers.models[t];
    while (!halt.load(std::memory_order_relaxed)) {
      const int64_t k = next.fetch_add(1);
      if (k >= count) break;
      const int64_t index = begin + k;
      try {
        const auto start = Clock::now();
        pde::Sample sample = pde::GenerateSample(model, *workers.prior, options.seed,
                                                 static_cast<uint64_t>(index), workers.jacobian);
        if (options.jacobian == JacobianOutput::kFull) {
          sample.jacobian_svd = pde::ExactTruncatedSvd(sample.jacobian, options.rank);
        }
        Eigen::Map<Eigen::VectorXd>(slot(kMData, k), dims.d_m) = sample.parameter;
        Eigen::Map<Eigen::VectorXd>(slot(kQData, k), dims.d_q) = sample.observables;
        if (options.jacobian != JacobianOutput::kNone) {
          const pde::TruncatedSvd& svd = sample.jacobian_svd;
          Eigen::Map<RowMajorMatrix>(slot(kUData, k), dims.d_q, dims.rank) = svd.u;
          Eigen::Map<Eigen::VectorXd>(slot(kSigmaData, k), dims.rank) = svd.singular_values;
          Eigen::Map<RowMajorMatrix>(slot(kVData, k), dims.d_m, dims.rank) = svd.v;
        }
        if (options.jacobian == JacobianOutput::kFull) {
          Eigen::Map<RowMajorMatrix>(slot(kJData, k), dims.d_q, dims.d_m) = sample.jacobian;
        }
        outcome.seconds[k] = std::chrono::duration<double>(Clock::now() - start).count();
        finished[k] = 1;
        completed.fetch_add(1);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        if (index < failed_index) {
          failed_index = index;
          failure = e.what();
        }
        halt = true;
      }
    }
    std::lock_guard<std::mutex> lock(mutex);
    ++exited;
    wake.notify_all();
  };

  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work, t);
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex);
    if (wake.wait_for(lock, std::chrono::milliseconds(100), [&] { return exited == threads; })) {
      break;
    }
    lock.unlock();
    progress.Update(done_before + completed.load());
    if (options.stop_requested && options.stop_requested() && !halt.exchange(true)) {
      outcome.stopped = true;
    }
  }
  for (std::thread& t : pool) t.join();
  progress.Update(done_before + completed.load());

  while (outcome.saved < count && finished[outcome.saved]) ++outcome.saved;
  outcome.seconds.resize(outcome.saved);
  if (failed_index != std::numeric_limits<int64_t>::max()) {
    outcome.error = absl::InternalError(absl::StrCat("sample ", failed_index, " (problem ",
                                                     ProblemName(options.problem), ", seed ",
                                                     options.seed, ") failed: ", failure));
  }
  if (outcome.saved > 0) {
    absl::Status saved = SaveChunk(partial_dir, begin, specs, buffers, outcome.saved);
    if (!saved.ok()) {
      outcome.saved = 0;
      outcome.seconds.clear();
      if (outcome.error.ok()) outcome.error = saved;
    }
  }
  return outcome;
}

// Writes the final files from the chunks, one array at a time (peak memory: one full array and
// one chunk's slice of it).
absl::Status AssembleFinalFiles(const GenerateOptions& options, int64_t n,
                                const std::vector<ArraySpec>& specs,
                                const std::vector<Segment>& segments,
                                std::vector<std::string>* written) {
  NpzWriteOptions write_options;
  write_options.compress = options.compress;
  for (const OutputFile& file : OutputFiles(options.jacobian)) {
    const std::string path = JoinPath(options.out_dir, file.file);
    absl::StatusOr<AtomicNpzWriter> writer = AtomicNpzWriter::Create(path, write_options);
    if (!writer.ok()) return writer.status();
    for (const char* name : file.arrays) {
      const ArraySpec& spec = *std::find_if(specs.begin(), specs.end(), [&](const ArraySpec& s) {
        return absl::string_view(s.name) == name;
      });
      absl::StatusOr<NpyArray> full = NpyArray::Zeros(spec.shape(n), NpyDType::kFloat64);
      if (!full.ok()) return full.status();
      const size_t sample_bytes = static_cast<size_t>(spec.sample_elements()) * sizeof(double);
      for (const Segment& segment : segments) {
        absl::StatusOr<NpzReader> reader = NpzReader::Open(segment.chunk.path);
        absl::StatusOr<NpyArray> part =
            reader.ok() ? ReadFloat64Array(*reader, name,
                                           spec.shape(segment.chunk.end - segment.chunk.begin))
                        : absl::StatusOr<NpyArray>(reader.status());
        if (!part.ok()) {
          return absl::Status(part.status().code(),
                              absl::StrCat(part.status().message(), " (delete ", segment.chunk.path,
                                           " to regenerate its samples)"));
        }
        std::memcpy(full->bytes.data() + segment.begin * sample_bytes,
                    part->bytes.data() + (segment.begin - segment.chunk.begin) * sample_bytes,
                    (segment.end - segment.begin) * sample_bytes);
      }
      absl::Status added = writer->Add(name, *full);
      if (!added.ok()) return added;
    }
    absl::Status committed = writer->Commit();
    if (!committed.ok()) return committed;
    written->push_back(path);
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const GenerateOptions& options) {
  auto bad = [](const std::string& message) { return absl::InvalidArgumentError(message); };
  if (options.samples < 1)
    return bad(absl::StrCat("--samples must be at least 1, not ", options.samples));
  if (options.out_dir.empty()) return bad("--out must name a directory");
  if (options.mesh < kMinMesh || options.mesh > kMaxMesh) {
    return bad(
        absl::StrCat("--mesh must be in [", kMinMesh, ", ", kMaxMesh, "], not ", options.mesh));
  }
  if (options.chunk_size < 1) {
    return bad(absl::StrCat("--chunk-size must be at least 1, not ", options.chunk_size));
  }
  if (options.threads < 0) {
    return bad(absl::StrCat("--threads must be 0 (all cores) or positive, not ", options.threads));
  }
  if (options.jacobian == JacobianOutput::kSvd && options.svd_method == SvdMethod::kRandomized &&
      (options.oversampling < 0 || options.power_iterations < 0)) {
    return bad("--oversampling and --power-iterations must not be negative");
  }
  return absl::OkStatus();
}

}  // namespace

const char* JacobianOutputName(JacobianOutput output) {
  switch (output) {
    case JacobianOutput::kNone:
      return "none";
    case JacobianOutput::kSvd:
      return "svd";
    case JacobianOutput::kFull:
      return "full";
  }
  return "unknown";
}

absl::StatusOr<JacobianOutput> ParseJacobianOutput(absl::string_view name) {
  if (name == "none") return JacobianOutput::kNone;
  if (name == "svd") return JacobianOutput::kSvd;
  if (name == "full") return JacobianOutput::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Jacobian form '", name, "' (known: full, svd, none)"));
}

const char* SvdMethodName(SvdMethod method) {
  return method == SvdMethod::kExact ? "exact" : "randomized";
}

absl::StatusOr<SvdMethod> ParseSvdMethod(absl::string_view name) {
  if (name == "exact") return SvdMethod::kExact;
  if (name == "randomized") return SvdMethod::kRandomized;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown SVD method '", name, "' (known: exact, randomized)"));
}

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

absl::StatusOr<GenerateReport> Generate(const GenerateOptions& options) {
  const auto start = Clock::now();
  absl::Status status = ValidateOptions(options);
  if (!status.ok()) return status;

  GenerateReport report;
  report.samples = options.samples;
  report.threads = options.threads == 0 ? AvailableCores() : options.threads;

  // The first model fixes the dimensions; the others are built only if there is work.
  Workers workers;
  Dims dims;
  try {
    workers.models.push_back(
        std::make_unique<pde::LogDiffusionModel>(ProblemConfigFor(options.problem, options.mesh)));
    workers.prior = std::make_unique<pde::BiLaplacianPrior>(workers.models[0]->mesh(),
                                                            PriorConfigFor(options.problem));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot set up problem ",
                                                   ProblemName(options.problem), " on a ",
                                                   options.mesh, "² mesh: ", e.what()));
  }
  dims.d_m = workers.models[0]->parameter_dim();
  dims.d_q = workers.models[0]->observation_dim();
  report.parameter_dim = dims.d_m;
  report.observation_dim = dims.d_q;
  if (options.jacobian != JacobianOutput::kNone) {
    const int64_t max_rank = std::min(dims.d_q, dims.d_m);
    if (options.rank < 1 || options.rank > max_rank) {
      return absl::InvalidArgumentError(absl::StrCat("--rank must be in [1, ", max_rank,
                                                     "] (min(d_Q, d_M)), not ", options.rank));
    }
    dims.rank = options.rank;
  }
  switch (options.jacobian) {
    case JacobianOutput::kNone:
      workers.jacobian.mode = pde::JacobianMode::kNone;
      break;
    case JacobianOutput::kFull:
      workers.jacobian.mode = pde::JacobianMode::kFull;
      break;
    case JacobianOutput::kSvd:
      workers.jacobian.mode = options.svd_method == SvdMethod::kExact
                                  ? pde::JacobianMode::kExactSvd
                                  : pde::JacobianMode::kRandomizedSvd;
      workers.jacobian.svd.rank = options.rank;
      workers.jacobian.svd.oversampling = options.oversampling;
      workers.jacobian.svd.power_iterations = options.power_iterations;
      break;
  }
  const std::vector<ArraySpec> specs = ArraySpecs(options.jacobian, dims);

  // Output directory, lock, partial data.
  status = MakeDirectories(options.out_dir);
  if (!status.ok()) return status;
  absl::StatusOr<DirectoryLock> lock = DirectoryLock::Acquire(options.out_dir);
  if (!lock.ok()) return lock.status();
  const std::string partial_dir = JoinPath(options.out_dir, kPartialDir);
  const std::string manifest_path = JoinPath(partial_dir, kManifestFile);
  if (options.restart && PathExists(partial_dir)) {
    Log(options, absl::StrCat("--restart: removing ", partial_dir));
    status = RemovePath(partial_dir);
    if (!status.ok()) return status;
  }
  status = MakeDirectories(partial_dir);
  if (status.ok()) status = RemoveStaleTemporaries(options.out_dir);
  if (status.ok()) status = RemoveStaleTemporaries(partial_dir);
  if (!status.ok()) return status;

  const nlohmann::json manifest = Manifest(options, dims);
  std::vector<Chunk> chunks;
  if (PathExists(manifest_path)) {
    absl::StatusOr<std::string> text = ReadFileToString(manifest_path);
    if (!text.ok()) return text.status();
    const nlohmann::json found = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (found.is_discarded()) {
      return absl::FailedPreconditionError(absl::StrCat(
          manifest_path, " is not valid JSON; remove ", partial_dir, " or pass --restart"));
    }
    status = CheckManifest(found, manifest, manifest_path);
    if (!status.ok()) return status;
    absl::StatusOr<std::vector<Chunk>> scanned = ScanChunks(partial_dir, specs, options);
    if (!scanned.ok()) return scanned.status();
    chunks = *std::move(scanned);
  } else {
    absl::StatusOr<std::vector<std::string>> entries = ListDirectory(partial_dir);
    if (!entries.ok()) return entries.status();
    if (!entries->empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(partial_dir, " holds files but no ", kManifestFile,
                       ", so it cannot be resumed; remove it or pass --restart"));
    }
    status = WriteFileAtomically(manifest_path, manifest.dump(2) + "\n");
    if (!status.ok()) return status;
  }

  std::vector<Segment> segments;
  std::vector<std::pair<int64_t, int64_t>> gaps;
  PlanCoverage(chunks, options.samples, &segments, &gaps);
  int64_t missing = 0;
  for (const auto& [begin, end] : gaps) missing += end - begin;
  report.reused = options.samples - missing;
  if (report.reused > 0) {
    Log(options, absl::StrCat("resuming: ", report.reused, " of ", options.samples,
                              " samples are already in ", partial_dir));
  }

  // Generate the gaps, chunk by chunk.
  if (missing > 0) {
    try {
      const int threads = static_cast<int>(std::min<int64_t>(report.threads, missing));
      while (static_cast<int>(workers.models.size()) < threads) {
        workers.models.push_back(std::make_unique<pde::LogDiffusionModel>(
            ProblemConfigFor(options.problem, options.mesh)));
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("cannot set up the models: ", e.what()));
    }
    ProgressReporter progress("generate", "samples", options.samples, report.reused,
                              options.progress);
    double compute_seconds = 0.0;
    int64_t saved_total = report.reused;
    const auto generation_start = Clock::now();
    auto stopped = [&](int64_t saved) {
      return absl::CancelledError(absl::StrCat("stopped with ", saved, " of ", options.samples,
                                               " samples saved in ", partial_dir,
                                               "; rerun the same command to resume"));
    };
    for (const auto& [gap_begin, gap_end] : gaps) {
      for (int64_t begin = gap_begin; begin < gap_end; begin += options.chunk_size) {
        // Checked here too: a chunk can finish before GeneratePiece polls the request.
        if (options.stop_requested && options.stop_requested()) {
          progress.Finish(saved_total);
          return stopped(saved_total);
        }
        const int64_t end = std::min(gap_end, begin + options.chunk_size);
        PieceOutcome piece = GeneratePiece(options, dims, specs, workers, partial_dir, begin, end,
                                           progress, saved_total);
        if (piece.saved > 0) {
          segments.push_back({begin,
                              begin + piece.saved,
                              {begin, begin + piece.saved,
                               JoinPath(partial_dir, ChunkName(begin, begin + piece.saved))}});
          saved_total += piece.saved;
          report.generated += piece.saved;
          for (double s : piece.seconds) compute_seconds += s;
          if (options.on_chunk_saved) options.on_chunk_saved(saved_total);
        }
        if (!piece.error.ok() || piece.stopped) {
          progress.Finish(saved_total);
          if (!piece.error.ok()) {
            return absl::Status(
                piece.error.code(),
                absl::StrCat(piece.error.message(), "; ", saved_total, " of ", options.samples,
                             " samples are saved in ", partial_dir));
          }
          return stopped(saved_total);
        }
      }
    }
    progress.Finish(saved_total);
    report.seconds_per_sample =
        report.generated > 0 ? compute_seconds / static_cast<double>(report.generated) : 0.0;
    const double generation_seconds =
        std::chrono::duration<double>(Clock::now() - generation_start).count();
    Log(options, absl::StrFormat("generated %d samples in %s (%.4g s per sample per thread)",
                                 report.generated, FormatDuration(generation_seconds),
                                 report.seconds_per_sample));
  }
  std::sort(segments.begin(), segments.end(),
            [](const Segment& a, const Segment& b) { return a.begin < b.begin; });

  // Final files. generate.json goes first (so that no stale summary vouches for new files in
  // the window before it is rewritten), and files of another Jacobian form, which would
  // belong to a different data set, are removed.
  status = RemovePath(JoinPath(options.out_dir, kGenerateSummaryFile));
  for (const char* stale : {kJsvdFile, kJacobianFile}) {
    const std::vector<OutputFile> files = OutputFiles(options.jacobian);
    const bool produced = std::any_of(files.begin(), files.end(), [&](const OutputFile& f) {
      return std::string(f.file) == stale;
    });
    const std::string path = JoinPath(options.out_dir, stale);
    if (status.ok() && !produced && PathExists(path)) {
      Log(options, absl::StrCat("removing ", path, ", left by a run with another --jacobian"));
      status = RemovePath(path);
    }
  }
  if (status.ok()) {
    status = AssembleFinalFiles(options, options.samples, specs, segments, &report.files);
  }
  if (!status.ok()) return status;

  report.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json summary = manifest;
  summary["samples"] = options.samples;
  const pde::PriorConfig prior = PriorConfigFor(options.problem);
  summary["prior"] = {
      {"delta", prior.delta},
      {"gamma", prior.gamma},
      {"mean", prior.mean},
      {"noise_factor",
       prior.noise_factor == pde::NoiseFactor::kQuadrature ? "quadrature" : "lumped"}};
  nlohmann::json files = nlohmann::json::array();
  for (const OutputFile& file : OutputFiles(options.jacobian)) files.push_back(file.file);
  summary["files"] = files;
  summary["compressed"] = options.compress;
  summary["threads"] = report.threads;
  summary["generated_samples"] = report.generated;
  summary["reused_samples"] = report.reused;
  summary["seconds_per_sample"] = report.seconds_per_sample;
  summary["wall_seconds"] = report.wall_seconds;
  const std::string summary_path = JoinPath(options.out_dir, kGenerateSummaryFile);
  status = WriteFileAtomically(summary_path, summary.dump(2) + "\n");
  if (!status.ok()) return status;
  report.files.push_back(summary_path);

  if (!options.keep_partial) {
    status = RemovePath(partial_dir);
    if (!status.ok()) return status;
  }
  return report;
}

}  // namespace dino::pipeline
