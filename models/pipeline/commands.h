// The subcommands of dino-train, each registered on a CLI11 application. The main program only
// creates the application and adds the subcommands, so further ones (fit, evaluate) are one
// Add...Command call each.
//
// A subcommand runs during parsing (its CLI11 callback); afterwards *exit_code holds
// kExitSuccess, kExitFailure (the error was printed to stderr, prefixed with
// "dino-train <subcommand>: error: ") or kExitInterrupted (SIGINT/SIGTERM during generate; the
// finished samples are saved and a rerun resumes).
#ifndef DINO_MODELS_PIPELINE_COMMANDS_H_
#define DINO_MODELS_PIPELINE_COMMANDS_H_

namespace CLI {
class App;
}  // namespace CLI

namespace dino::pipeline {

inline constexpr int kExitSuccess = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitInterrupted = 130;  // 128 + SIGINT, as shells report it.

// While alive, the first SIGINT/SIGTERM asks the running command to save what it has and stop
// (requested() turns true); a second one ends the process at once. The destructor restores the
// default actions. Used by generate (finished chunks stay) and fit (the model is written as it is
// after the current epoch or L-BFGS round, with stopped_early in its metadata).
class ScopedStopRequest {
 public:
  ScopedStopRequest();
  ~ScopedStopRequest();
  ScopedStopRequest(const ScopedStopRequest&) = delete;
  ScopedStopRequest& operator=(const ScopedStopRequest&) = delete;
  static bool requested();
};

// `generate`: see generate.h.
CLI::App* AddGenerateCommand(CLI::App& app, int* exit_code);
// `bases`: see compute_bases.h.
CLI::App* AddBasesCommand(CLI::App& app, int* exit_code);

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_COMMANDS_H_
