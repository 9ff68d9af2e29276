// Thread counts of the numerical libraries. LibTorch's intra-op pool and OpenBLAS's own
// threads multiply: on a small machine both at 2 made products ~3× slower than either alone,
// so every program of the project sets both deliberately, once, at start-up.
#pragma once

namespace dino::models {

// Sets LibTorch's intra-op threads and, when the OpenBLAS in use exposes it, OpenBLAS's
// thread count. Values below 1 are treated as 1.
void ConfigureComputeThreads(int torch_threads, int blas_threads);

}  // namespace dino::models
