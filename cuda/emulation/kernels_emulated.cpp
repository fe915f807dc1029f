// kernels.cu compiled by the host C++ compiler for the CPU emulation (emulation.hpp): the same
// source as the GPU build, with the device built-ins of builtins.hpp.
#ifndef SIMCLR_CUDA_EMULATION
#error "kernels_emulated.cpp is built only with SIMCLR_CUDA_EMULATION"
#endif
#include "../kernels.cu"
