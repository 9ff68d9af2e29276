// Runs the fake surrogate, training and admin services (see fake_surrogate.h and
// fake_training.h) for the CLI / bench / Python client tests:
// `dino_fake_surrogate_server [--port N] [--admin_token TOKEN] [--refuse_every_evaluate N]`
// prints "PORT <n>" once listening (N = 0, the default, picks a free port) and serves until
// killed. With --admin_token the Training and ModelAdmin RPCs need "authorization: Bearer
// TOKEN"; with --refuse_every_evaluate every N-th Evaluate call is RESOURCE_EXHAUSTED.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/client/fake_surrogate.h"

int main(int argc, char** argv) {
  int port = 0;
  std::string admin_token;
  long long refuse_every_evaluate = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
      port = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--admin_token") == 0 && i + 1 < argc) {
      admin_token = argv[++i];
    } else if (std::strcmp(argv[i], "--refuse_every_evaluate") == 0 && i + 1 < argc) {
      refuse_every_evaluate = std::atoll(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--port N] [--admin_token TOKEN] [--refuse_every_evaluate N]\n",
                   argv[0]);
      return 2;
    }
  }
  dino::testing::FakeServer fake =
      dino::testing::StartFakeServer(port, admin_token, refuse_every_evaluate);
  if (fake.server == nullptr) {
    std::fprintf(stderr, "cannot listen on 127.0.0.1:%d\n", port);
    return 1;
  }
  std::printf("PORT %d\n", fake.port);
  std::fflush(stdout);
  fake.server->Wait();
  return 0;
}
