// EnsureMatchedKernels: run the process's matrix products on kernels for the
// CPU's instruction set, with nothing for the user to set (see
// kernel_choice.h for why and how the choice is made).
//
// Call it first in main(), before any thread starts and before anything is
// printed: when the loaded OpenBLAS (or ATen) runs below what the CPU supports
// and the operator did not choose, it sets OPENBLAS_CORETYPE and/or
// ATEN_CPU_CAPABILITY and re-executes its own binary with the same argv (once;
// ATTNSCORE_KERNELS_REEXEC guards against a loop), by its path so that the
// process keeps its name (/proc/self/exe when the path is gone). If the exec
// fails it writes one line to stderr and returns: the process runs on as
// loaded. The server, the benchmarks and the test binaries that compute call
// it, so all of them compute on the same kernels.
//
// LibTorch-free: the BLAS core comes from openblas_get_corename() found with
// dlsym in the running process (empty when OpenBLAS is not loaded); ATen's
// capability from CurrentKernelInfo() in aten_capability.h.
//
// Thread safety: EnsureMatchedKernels() from main() before threads; the rest
// from any thread.
#ifndef ATTNSCORE_SERVER_CPU_MATCHED_KERNELS_H_
#define ATTNSCORE_SERVER_CPU_MATCHED_KERNELS_H_

#include <string>

#include "server/cpu/kernel_choice.h"
#include "server/cpu/kernel_info.h"

namespace attnscore::cpu {

// May not return (it re-executes the binary); see the file comment.
void EnsureMatchedKernels(int argc, char** argv);

// The variables ChooseKernels reads, from this process's environment.
KernelEnv ReadKernelEnv();

// openblas_get_corename() of the OpenBLAS loaded in this process; "" when none
// is loaded.
std::string LoadedBlasCore();

// This process's kernels, with `aten_capability` as given (the LibTorch part
// queries it). The sources say who chose: the decision EnsureMatchedKernels
// took (or, if it was not called, the one it would take now without
// re-executing).
KernelInfo DescribeKernels(const std::string& aten_capability);

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_MATCHED_KERNELS_H_
