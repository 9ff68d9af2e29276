#include "models/architectures/compute_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dino::models {

void ConfigureComputeThreads(int torch_threads, int blas_threads) {
  at::set_num_threads(std::max(1, torch_threads));
  // LibTorch reaches BLAS through libblas.so.3, which Debian resolves to OpenBLAS when
  // libopenblas0-pthread is installed; look the setter up rather than link OpenBLAS itself.
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(std::max(1, blas_threads));
  }
}

void TuneAllocatorForServing() {
  mallopt(M_MMAP_THRESHOLD, 512 << 20);
  mallopt(M_TRIM_THRESHOLD, 1024 << 20);
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  mallopt(M_ARENA_MAX, static_cast<int>(std::max(2L, cores)));
}

std::string BlasCoreName() {
  using CoreName = char* (*)();
  auto name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return name != nullptr ? std::string(name()) : std::string();
}

void UseNativeBlasKernels(char** argv) {
  // The marker keeps a second start from trying again, whatever OpenBLAS then reports.
  constexpr char kMarker[] = "DINO_BLAS_CORETYPE_CHOSEN";
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv(kMarker) != nullptr) return;
  if (BlasCoreName() != "Prescott") return;
  const char* core = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                     : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                       : nullptr;
  if (core == nullptr) return;  // Prescott is what this processor can do.
  setenv("OPENBLAS_CORETYPE", core, /*overwrite=*/1);
  setenv(kMarker, core, 1);
  execv("/proc/self/exe", argv);
  // Still here: the program keeps the fallback kernels, slower but correct.
  std::fprintf(stderr,
               "warning: could not restart with OPENBLAS_CORETYPE=%s (%s); matrix "
               "products use OpenBLAS's slower Prescott kernels\n",
               core, std::strerror(errno));
}

}  // namespace dino::models
