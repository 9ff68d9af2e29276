// Thread counts of the numerical libraries. LibTorch's intra-op pool and OpenBLAS's own
// threads multiply: on a small machine both at 2 made products ~3× slower than either alone,
// so every program of the project sets both deliberately, once, at start-up.
#pragma once

namespace dino::models {

// Sets LibTorch's intra-op threads and, when the OpenBLAS in use exposes it, OpenBLAS's
// thread count. Values below 1 are treated as 1.
void ConfigureComputeThreads(int torch_threads, int blas_threads);

}  // namespace dino::models

#include <string>

namespace dino::models {

// OpenBLAS picks its kernels for the processor it finds when it is loaded. Debian 12's
// OpenBLAS 0.3.21 does not know processors newer than itself (Sapphire and Emerald Rapids
// among them) and falls back to its Prescott (SSE3) kernels: a 1024 × 4225 × 100 DGEMM ran
// at 16 GFLOP/s there instead of 71 with the AVX-512 (SkylakeX) kernels on the development
// machine. Since OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded, a program that finds
// itself on that fallback re-executes itself once with the best core type the processor
// supports (SkylakeX with AVX-512, Haswell with AVX2). An OPENBLAS_CORETYPE set by the user
// is always respected (OPENBLAS_CORETYPE=Prescott keeps the fallback). Call first thing in
// main(); returns when no re-execution was needed or possible.
void UseNativeBlasKernels(char** argv);

// The allocator policy of a serving process (dino-server and the benchmarks that stand for it).
// Large batches move tens of MB per request (m of 1000 points of d_M = 4225 in float64 is
// 34 MB, their reduced Jacobians 40 MB). By default glibc serves such blocks with fresh
// mmap()s and returns them on free, so every large request page-faults through new memory
// (13 % of the server's time for B = 1000 Evaluate, perf; with a 256 KiB threshold B = 1000
// Evaluate took 2.6x and ReducedJacobian 7x as long in dino_serving_benchmark). So blocks up
// to 512 MB stay in the heap for reuse, and the resident size follows the peak load until the
// idle trim. And glibc's default of up to 8 arenas per core scatters what outlives a burst (a
// version loaded, a fine-tune job's record) over many heaps full of freed request buffers,
// where a trim cannot return their pages: one arena per core (at least 2) halved the soak's
// quiescent and peak RSS at the same throughput (docs/benchmarks/soak.md).
void TuneAllocatorForServing();

// The kernels OpenBLAS runs ("SkylakeX", "Prescott", …), or "" when the BLAS in use is not
// OpenBLAS.
std::string BlasCoreName();

}  // namespace dino::models
