// The files of a dino-train data directory, and the file operations the pipeline needs:
// atomic replacement (so a reader or a resumed run never sees a half-written file) and reading
// arrays with shape checks whose errors name the file and the array.
//
// Layout of a data directory (the array names and shapes of hIPPYflow's and tomoleary/dino's
// data generators, so their training scripts can read it):
//   mq_data.npz    m_data [n, d_M], q_data [n, d_Q]
//   Jsvd_data.npz  U_data [n, d_Q, r], sigma_data [n, r], V_data [n, d_M, r]
//   J_data.npz     J_data [n, d_Q, d_M]
//   generate.json  what was generated and how (written last: its presence means the data
//                  files above are complete and consistent with it)
//   partial/       chunks of an unfinished run (see generate.h)
//   bases.npz, spectra.csv, bases.json   written by `dino-train bases`
#ifndef DINO_MODELS_PIPELINE_FILES_H_
#define DINO_MODELS_PIPELINE_FILES_H_

#include <Eigen/Core>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/io/npy.h"
#include "models/io/npz.h"

namespace dino::pipeline {

inline constexpr char kMqFile[] = "mq_data.npz";
inline constexpr char kJsvdFile[] = "Jsvd_data.npz";
inline constexpr char kJacobianFile[] = "J_data.npz";
inline constexpr char kGenerateSummaryFile[] = "generate.json";
inline constexpr char kPartialDir[] = "partial";
inline constexpr char kBasesFile[] = "bases.npz";
inline constexpr char kSpectraFile[] = "spectra.csv";
inline constexpr char kBasesSummaryFile[] = "bases.json";

inline constexpr char kMData[] = "m_data";
inline constexpr char kQData[] = "q_data";
inline constexpr char kUData[] = "U_data";
inline constexpr char kSigmaData[] = "sigma_data";
inline constexpr char kVData[] = "V_data";
inline constexpr char kJData[] = "J_data";

// dir + "/" + name (name alone when dir is empty).
std::string JoinPath(const std::string& dir, const std::string& name);

// mkdir -p. FailedPrecondition when `path` exists and is not a directory.
absl::Status MakeDirectories(const std::string& path);
bool PathExists(const std::string& path);
// Removes a file or a directory tree; OK when it does not exist.
absl::Status RemovePath(const std::string& path);
// The names of the entries of a directory, sorted.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& path);
// The whole file as a string.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same directory, fsync,
// rename over `path`, fsync of the directory. Readers see the old file or the new one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// An .npz archive that appears at its path only once complete. Members go to a temporary file
// in the same directory (".<name>.tmp-<pid>"); Commit closes it, fsyncs it and renames it over
// the path. Destroying a writer that was not committed removes the temporary file.
class AtomicNpzWriter {
 public:
  static absl::StatusOr<AtomicNpzWriter> Create(const std::string& path,
                                                const NpzWriteOptions& options = {});
  AtomicNpzWriter(AtomicNpzWriter&& other) noexcept;
  AtomicNpzWriter& operator=(AtomicNpzWriter&& other) noexcept;
  AtomicNpzWriter(const AtomicNpzWriter&) = delete;
  AtomicNpzWriter& operator=(const AtomicNpzWriter&) = delete;
  ~AtomicNpzWriter();

  const std::string& path() const { return path_; }
  absl::Status Add(absl::string_view name, const NpyArray& array);
  absl::Status Commit();

 private:
  AtomicNpzWriter() = default;
  void Discard();

  std::string path_;
  std::string temp_path_;
  std::optional<NpzWriter> writer_;
};

// Shape with wildcards for checks: -1 matches any extent.
using ShapePattern = std::vector<int64_t>;

// Reads array `name` from `reader`, converted to float64 (float32 and integer data are
// accepted and widened), and checks its shape against `expected`. Errors name the file and
// array, e.g. "out/mq_data.npz: array 'q_data' has shape [10, 49], expected [10, 50]".
absl::StatusOr<NpyArray> ReadFloat64Array(const NpzReader& reader, absl::string_view name,
                                          const ShapePattern& expected);

// float64 arrays from Eigen objects: a matrix becomes [rows, cols] in C order (element (i, j)
// at i·cols + j, as NumPy indexes it), a vector becomes [size].
NpyArray MatrixToArray(const Eigen::MatrixXd& matrix);
NpyArray VectorToArray(const Eigen::VectorXd& vector);

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_FILES_H_
