#include "tests/common/server_process.h"

#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <regex>
#include <stdexcept>

namespace dino::testing {

ServerProcess::ServerProcess(const std::string& binary, std::vector<std::string> args) {
  args.insert(args.begin(), binary);
  args.push_back("--port=0");
  args.push_back("--metrics_port=0");
  args.push_back("--host=127.0.0.1");
  int out[2];
  if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  std::string output;
  const std::regex listening("listening on [^\\s]*:(\\d+)");
  const std::regex metrics("metrics on http://[^\\s]*:(\\d+)/metrics");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (port_ == 0 && std::chrono::steady_clock::now() < deadline) {
    pollfd readable{out[0], POLLIN, 0};
    if (::poll(&readable, 1, 200) <= 0) continue;
    char buffer[512];
    const ssize_t n = ::read(out[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
    std::smatch match;
    if (std::regex_search(output, match, metrics)) metrics_port_ = std::stoi(match[1]);
    if (std::regex_search(output, match, listening)) port_ = std::stoi(match[1]);
  }
  ::close(out[0]);  // The server prints nothing else on stdout.
  output_ = output;
  if (port_ == 0) {
    ::kill(pid_, SIGKILL);
    Wait();
    throw std::runtime_error("dino-server did not start; its stdout: " + output);
  }
}

ServerProcess::~ServerProcess() {
  if (!exited_) {
    ::kill(pid_, SIGKILL);
    Wait();
  }
}

void ServerProcess::Signal(int signal_number) const { ::kill(pid_, signal_number); }

int ServerProcess::Wait() {
  int status = 0;
  ::waitpid(pid_, &status, 0);
  exited_ = true;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
    }
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

}  // namespace dino::testing
