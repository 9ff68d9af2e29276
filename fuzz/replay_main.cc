// The main() of a fuzz target when it is built without libFuzzer (the g++ trees: build,
// build-asan): runs LLVMFuzzerTestOneInput on every file named on the command line or found in
// a folder named there (the seed corpus and the regression inputs), then, with
// --mutate_seconds=N, on mutants of them for N seconds: bit flips, byte overwrites, cut,
// repeated and inserted ranges, splices of two inputs, from a fixed random seed (so a failure
// reproduces). That is ctest's fuzz smoke in every tree: it needs no clang, and the ASan tree
// runs it under ASan+UBSan. Coverage-guided fuzzing is libFuzzer's, in build-fuzz (make fuzz).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);
// The sanitizers' hook for their fatal reports (absent without a sanitizer).
extern "C" __attribute__((weak)) void __sanitizer_set_death_callback(void (*callback)(void));

namespace {

using Bytes = std::vector<uint8_t>;

// The input being run, for WriteFailingInput.
const Bytes* current_input = nullptr;
// Where a failing input is written: fuzz-failure-<target> in the working folder.
char failure_path[512] = "fuzz-failure";

// Writes the input that was running when the process died (abort, a signal, a sanitizer
// report), so that a failure of a mutant reproduces: `<target> <that file>`. Only
// async-signal-safe calls.
void WriteFailingInput() {
  if (current_input == nullptr) return;
  const int fd = ::open(failure_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  if (!current_input->empty()) {
    (void)!::write(fd, current_input->data(), current_input->size());
  }
  ::close(fd);
  static const char kNote[] = "the failing input was written to ";
  (void)!::write(2, kNote, sizeof(kNote) - 1);
  (void)!::write(2, failure_path, std::strlen(failure_path));
  (void)!::write(2, "\n", 1);
  current_input = nullptr;
}

void OnFatalSignal(int signal) {
  WriteFailingInput();
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

void Run(const Bytes& input) {
  // A copy of exactly the input's size, so that ASan sees reads past its end.
  const Bytes copy = input;
  current_input = &copy;
  LLVMFuzzerTestOneInput(copy.data(), copy.size());
  current_input = nullptr;
}

// One random edit of `input` (spliced with `other` sometimes).
Bytes Mutate(const Bytes& input, const Bytes& other, std::mt19937_64& random) {
  Bytes out = input;
  auto below = [&random](size_t n) { return n == 0 ? 0 : static_cast<size_t>(random() % n); };
  const int edits = 1 + static_cast<int>(below(4));
  for (int e = 0; e < edits; ++e) {
    switch (below(6)) {
      case 0:  // Flip a bit.
        if (!out.empty()) out[below(out.size())] ^= static_cast<uint8_t>(1u << below(8));
        break;
      case 1: {  // Overwrite a byte with a random or an interesting value.
        static constexpr uint8_t kInteresting[] = {0, 1, 0x7f, 0x80, 0xff, '"', '[', '{', '-'};
        if (!out.empty()) {
          out[below(out.size())] =
              below(2) ? static_cast<uint8_t>(random()) : kInteresting[below(sizeof(kInteresting))];
        }
        break;
      }
      case 2: {  // Cut a range.
        const size_t at = below(out.size() + 1);
        const size_t n = below(std::min<size_t>(out.size() - at, 16) + 1);
        out.erase(out.begin() + at, out.begin() + at + n);
        break;
      }
      case 3: {  // Repeat a range.
        if (out.empty()) break;
        const size_t at = below(out.size());
        const size_t n = 1 + below(std::min<size_t>(out.size() - at, 16));
        const Bytes range(out.begin() + at, out.begin() + at + n);
        out.insert(out.begin() + below(out.size() + 1), range.begin(), range.end());
        break;
      }
      case 4: {  // Insert random bytes.
        const size_t n = 1 + below(8);
        Bytes noise(n);
        for (uint8_t& b : noise) b = static_cast<uint8_t>(random());
        out.insert(out.begin() + below(out.size() + 1), noise.begin(), noise.end());
        break;
      }
      default: {  // Splice: a prefix of this input and a suffix of the other.
        const size_t head = below(out.size() + 1);
        const size_t tail = below(other.size() + 1);
        out.resize(head);
        out.insert(out.end(), other.begin() + tail, other.end());
        break;
      }
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  std::snprintf(failure_path, sizeof(failure_path), "fuzz-failure-%s",
                std::filesystem::path(argv[0]).filename().c_str());
  for (int signal : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(signal, OnFatalSignal);
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(WriteFailingInput);
  namespace fs = std::filesystem;
  double mutate_seconds = 0;
  std::vector<fs::path> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    constexpr char kMutate[] = "--mutate_seconds=";
    if (arg.rfind(kMutate, 0) == 0) {
      mutate_seconds = std::atof(arg.c_str() + std::strlen(kMutate));
    } else if (fs::is_directory(arg)) {
      for (const auto& entry : fs::directory_iterator(arg)) {
        if (entry.is_regular_file()) paths.push_back(entry.path());
      }
    } else if (fs::is_regular_file(arg)) {
      paths.push_back(arg);
    } else {
      std::fprintf(stderr, "%s: no such file or folder\n", argv[i]);
      return 2;
    }
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) {
    std::fprintf(stderr, "no inputs: name corpus folders or files\n");
    return 2;
  }
  std::vector<Bytes> inputs;
  for (const fs::path& path : paths) {
    std::ifstream file(path, std::ios::binary);
    inputs.emplace_back(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    Run(inputs.back());
  }
  int64_t mutants = 0;
  std::mt19937_64 random(12345);
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(mutate_seconds));
  while (mutate_seconds > 0 && std::chrono::steady_clock::now() < end) {
    const Bytes& input = inputs[random() % inputs.size()];
    const Bytes& other = inputs[random() % inputs.size()];
    Run(Mutate(input, other, random));
    ++mutants;
  }
  std::printf("replayed %zu inputs and %lld mutants of them\n", inputs.size(),
              static_cast<long long>(mutants));
  return 0;
}
