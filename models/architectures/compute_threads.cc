#include "models/architectures/compute_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>

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

}  // namespace dino::models
