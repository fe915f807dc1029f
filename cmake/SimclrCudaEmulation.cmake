# The CPU emulation of the GPU path (docs/gpu.md, "Emulation"): the GPU path's own sources (kernels,
# tiled engine, device loss) built by the host compiler against cuda/emulation, which runs kernels on
# fibers and emulates the CUDA runtime and cuBLAS calls on host memory. It needs only the CUDA
# toolkit's headers, no nvcc, no GPU and no CUDA library, so the GPU tests run on every machine that
# has the headers, sanitizers included.
#
# SIMCLR_GPU_EMULATION: AUTO builds it with the tests when the headers are found; ON requires them;
# OFF skips it. Never installed: it is a test vehicle, not a backend.

set(SIMCLR_GPU_EMULATION AUTO CACHE STRING "Build the CPU emulation of the GPU path for the tests (AUTO, ON, OFF)")
set_property(CACHE SIMCLR_GPU_EMULATION PROPERTY STRINGS AUTO ON OFF)
set(SIMCLR_GPU_EMULATION_ENABLED OFF)
if(SIMCLR_GPU_EMULATION STREQUAL "OFF")
  message(STATUS "simclr: GPU emulation off (SIMCLR_GPU_EMULATION=OFF)")
  return()
endif()

find_path(SIMCLR_CUDA_HEADERS_DIR NAMES cuda_runtime_api.h cublas_v2.h cuda_bf16.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_ROOT} ENV CUDAToolkit_ROOT ENV CUDA_HOME ENV CUDA_PATH
  PATHS /usr/local/cuda /opt/cuda
  PATH_SUFFIXES include targets/x86_64-linux/include)
if(NOT SIMCLR_CUDA_HEADERS_DIR OR NOT EXISTS "${SIMCLR_CUDA_HEADERS_DIR}/cublas_v2.h")
  if(SIMCLR_GPU_EMULATION STREQUAL "ON")
    message(FATAL_ERROR "simclr: SIMCLR_GPU_EMULATION=ON but the CUDA toolkit headers "
                        "(cuda_runtime_api.h, cublas_v2.h) were not found (CUDAToolkit_ROOT)")
  endif()
  message(STATUS "simclr: GPU emulation off: CUDA toolkit headers not found (SIMCLR_GPU_EMULATION=AUTO)")
  return()
endif()
set(SIMCLR_GPU_EMULATION_ENABLED ON)

add_library(simclr_cuda_emulated STATIC
  cuda/emulation/kernels_emulated.cpp
  cuda/emulation/runtime.cpp
  cuda/emulation/blas.cpp
  cuda/device_engine.cpp
  cuda/device_loss.cpp
  cuda/device_communicator.cpp)
target_include_directories(simclr_cuda_emulated PUBLIC ${PROJECT_SOURCE_DIR}/cuda
                                                SYSTEM PUBLIC ${SIMCLR_CUDA_HEADERS_DIR})
# kernels.cu's `#pragma unroll` is nvcc's; the host compiler ignores it.
set_source_files_properties(cuda/emulation/kernels_emulated.cpp PROPERTIES
                            COMPILE_OPTIONS $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wno-unknown-pragmas>)
target_compile_definitions(simclr_cuda_emulated PRIVATE SIMCLR_CUDA_EMULATION=1)
target_link_libraries(simclr_cuda_emulated PUBLIC simclr PRIVATE simclr_flags)

# The NCCL communicator on the emulation: NCCL's calls emulated over MPI, one process per GPU.
set(_simclr_emu_nccl "no NCCL emulation (needs MPI and nccl.h)")
find_path(SIMCLR_NCCL_HEADER_DIR nccl.h
  HINTS ${SIMCLR_CUDA_HEADERS_DIR} ${NCCL_ROOT} ENV NCCL_ROOT ENV NCCL_HOME
  PATH_SUFFIXES include)
if(TARGET simclr_mpi AND SIMCLR_NCCL_HEADER_DIR)
  add_library(simclr_nccl_emulated STATIC
    distributed/nccl_communicator.cpp
    cuda/emulation/nccl.cpp)
  target_include_directories(simclr_nccl_emulated SYSTEM PUBLIC ${SIMCLR_NCCL_HEADER_DIR})
  target_link_libraries(simclr_nccl_emulated PUBLIC simclr_cuda_emulated simclr_mpi PRIVATE simclr_flags)
  set(_simclr_emu_nccl "NCCL over MPI")
endif()
message(STATUS "simclr: GPU emulation on (CUDA headers ${SIMCLR_CUDA_HEADERS_DIR}; ${_simclr_emu_nccl})")
