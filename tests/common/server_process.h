// Runs a real dino-server process for end-to-end tests: starts it on a free port, waits for
// the "listening on" line, and stops it with a signal.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace dino::testing {

class ServerProcess {
 public:
  // Starts `binary` with `args` plus --port=0 --metrics_port=0 --host=127.0.0.1, and waits
  // up to 60 s for it to report its ports. Throws std::runtime_error if it does not.
  ServerProcess(const std::string& binary, std::vector<std::string> args);
  ~ServerProcess();  // SIGKILL if still running.

  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  // What the server printed on stdout up to its "listening on" line (the ports of its HTTP
  // fronts among it).
  const std::string& output() const { return output_; }

  void Signal(int signal_number) const;
  // Waits for the process to exit and returns its exit status (-1 if killed by a signal).
  int Wait();

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  bool exited_ = false;
  std::string output_;
};

// The body of an HTTP GET to 127.0.0.1:port/path ("" on failure).
std::string HttpGet(int port, const std::string& path);

}  // namespace dino::testing
