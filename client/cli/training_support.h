// Helpers of the `dino` CLI's training and admin subcommands (finetune, jobs, job, cancel,
// set-default, unload) and of --token_file: reading the dino / hIPPYflow data layout, cutting
// it into sample batches, and formatting progress, job statuses and tables. Separate from
// main.cc so that the unit tests can exercise them without a server.
#ifndef DINO_CLIENT_CLI_TRAINING_SUPPORT_H_
#define DINO_CLIENT_CLI_TRAINING_SUPPORT_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/training_client.h"
#include "dino/v1/training.pb.h"
#include "models/io/npy.h"

namespace dino::cli {

// The bearer token held in `path`: its contents without surrounding whitespace (a final
// newline, say). InvalidArgument, naming the file but never echoing the token, when the rest is
// empty or holds anything but visible ASCII; the errno-derived code when it cannot be read.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Which Jacobian data to send with the samples (`dino finetune --jacobian`).
enum class JacobianMode {
  kAuto,  // J_data.npz if present, else Jsvd_data.npz, else none.
  kFull,  // J_data.npz: J_data [n, d_Q, d_M].
  kSvd,   // Jsvd_data.npz: U_data [n, d_Q, r], sigma_data [n, r], V_data [n, d_M, r].
  kNone,  // Outputs only (the L2 loss).
};
// "auto", "full", "svd", "none"; InvalidArgument otherwise.
absl::StatusOr<JacobianMode> ParseJacobianMode(absl::string_view name);

// A data set in the dino / hIPPYflow layout, held in memory.
struct FineTuneData {
  std::string dir;
  NpyArray m;  // m_data [n, d_M]
  NpyArray q;  // q_data [n, d_Q]
  client::SampleArrays::JacobianForm form = client::SampleArrays::JacobianForm::kNone;
  NpyArray jacobian;     // kFull: J_data [n, d_Q, d_M]
  NpyArray u, sigma, v;  // kSvd: U_data, sigma_data, V_data

  int64_t samples() const { return m.rank() > 0 ? m.shape[0] : 0; }
  // Bytes of one sample over all its arrays (what it adds to a message, framing aside).
  int64_t BytesPerSample() const;
};

// Reads DIR/mq_data.npz (m_data, q_data) and, as `mode` says, DIR/J_data.npz or
// DIR/Jsvd_data.npz. Integer arrays become float64; float32 and float64 are kept. Checks the
// ranks ([n, d_M], [n, d_Q], [n, d_Q, d_M], [n, d_Q, r], [n, r], [n, d_M, r]) and that every
// array has the same n and the dimensions agree (InvalidArgument naming file and array).
// `count` >= 0 keeps only the first `count` samples (InvalidArgument when there are fewer);
// -1 keeps all.
absl::StatusOr<FineTuneData> LoadFineTuneData(const std::string& dir, JacobianMode mode,
                                              int64_t count = -1);

// Rows [begin, end) of `array` along its first axis, as a new array. InvalidArgument for a
// rank-0 array or a range outside [0, shape[0]].
absl::StatusOr<NpyArray> SliceRows(const NpyArray& array, int64_t begin, int64_t end);

// Samples [begin, end) of `data`, as the arrays of one SampleBatch.
absl::StatusOr<client::SampleArrays> SliceSamples(const FineTuneData& data, int64_t begin,
                                                  int64_t end, bool validation);

// Default payload of one upload message: 4 MiB (gRPC's default receive limit) less 64 KiB of
// headroom for the message framing and the tensors' shape fields.
inline constexpr int64_t kDefaultChunkBytes = (int64_t{4} << 20) - (int64_t{64} << 10);
// Samples per message: as many as fit in `budget_bytes`, at least 1.
int64_t ChunkSamples(int64_t bytes_per_sample, int64_t budget_bytes = kDefaultChunkBytes);

// "42s", "3m05s", "2h03m", "3d04h"; "?" for a negative or non-finite time.
std::string FormatSeconds(double seconds);
// "512 B", "12.3 MiB", "1.50 GiB".
std::string FormatBytes(int64_t bytes);

// "upload 512/1024 samples (50%), 12.3 MiB, 1.2k samples/s, 2.4 MiB/s, ETA 4s".
std::string FormatUploadProgress(const client::UploadProgress& progress, int64_t total_samples);
// One line of a job's live progress, e.g.
// "TRAINING epoch 12/100, train loss 1.234e-03, validation loss 2.1e-03, validation accuracy
//  l2 0.757 h1 0.142, 1.2k samples/s, ETA 3m05s".
std::string FormatJobProgress(const v1::JobStatus& status);
// A multi-line description of a job (dino finetune / job / cancel on stdout).
std::string FormatJobSummary(const v1::JobStatus& status);
// A table of jobs, one line each (dino jobs).
std::string FormatJobTable(const std::vector<v1::JobStatus>& jobs);

// The status as a JSON object with the proto's field names, numbers as numbers, the state as
// its name ("SUCCEEDED"), absent accuracies as null. `indent` < 0: one line.
std::string JobStatusJson(const v1::JobStatus& status, int indent = 2);
// {"jobs": [<JobStatusJson>, ...]}
std::string JobListJson(const std::vector<v1::JobStatus>& jobs, int indent = 2);

// Prints progress lines on a stream: on a terminal each update overwrites the previous line,
// at most every `tty_interval`; otherwise each update is a new line, at most every
// `line_interval` (forced updates, such as a change of state, always print).
class ProgressPrinter {
 public:
  ProgressPrinter(std::FILE* out, bool tty, absl::Duration tty_interval = absl::Milliseconds(100),
                  absl::Duration line_interval = absl::Seconds(2));
  ProgressPrinter(const ProgressPrinter&) = delete;
  ProgressPrinter& operator=(const ProgressPrinter&) = delete;
  ~ProgressPrinter() { Finish(); }

  void Update(const std::string& line, bool force = false);
  // Ends an overwritten terminal line, so what follows starts on its own line.
  void Finish();

 private:
  std::FILE* out_;
  bool tty_;
  absl::Duration tty_interval_, line_interval_;
  absl::Time last_ = absl::InfinitePast();
  std::string last_line_;
  bool pending_newline_ = false;
};

}  // namespace dino::cli

#endif  // DINO_CLIENT_CLI_TRAINING_SUPPORT_H_
