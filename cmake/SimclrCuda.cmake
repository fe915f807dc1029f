# The GPU path (docs/gpu.md): targets simclr_cuda (kernels + device loss) and simclr_nccl (the NCCL
# communicator), and the benchmark simclr-gpu-bench. Included from the top-level CMakeLists, so the
# variables set here (SIMCLR_CUDA_ENABLED) are the top level's.
#
# SIMCLR_WITH_CUDA: AUTO builds the GPU path when nvcc and the CUDA toolkit are found; ON requires
# them; OFF skips it. NCCL (and MPI) are needed only by simclr_nccl: without them the device loss,
# its tests and the benchmark are still built. CPU-only users never link CUDA: the core targets do
# not change.

set(SIMCLR_CUDA_ENABLED OFF)
if(SIMCLR_WITH_CUDA STREQUAL "OFF")
  message(STATUS "simclr: GPU path off (SIMCLR_WITH_CUDA=OFF)")
  return()
endif()

# Reports a missing piece: fatal when the GPU path is required, one status line under AUTO.
macro(simclr_cuda_missing what)
  if(SIMCLR_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "simclr: SIMCLR_WITH_CUDA=ON but ${what} was not found. Point CMake at it "
                        "(CUDAToolkit_ROOT, CMAKE_CUDA_COMPILER, NCCL_ROOT) or configure with "
                        "-DSIMCLR_WITH_CUDA=OFF.")
  endif()
  message(STATUS "simclr: GPU path off: ${what} not found (SIMCLR_WITH_CUDA=AUTO)")
  return()
endmacro()

# nvcc: an explicit CMAKE_CUDA_COMPILER / CUDACXX wins, else PATH, else the usual install prefixes.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  find_program(SIMCLR_NVCC nvcc
    HINTS ${CUDAToolkit_ROOT} ENV CUDAToolkit_ROOT ENV CUDA_HOME ENV CUDA_PATH
    PATHS /usr/local/cuda /opt/cuda
    PATH_SUFFIXES bin)
  if(SIMCLR_NVCC)
    set(CMAKE_CUDA_COMPILER "${SIMCLR_NVCC}" CACHE FILEPATH "CUDA compiler")
  endif()
endif()
if(NOT CMAKE_CUDA_COMPILER)
  include(CheckLanguage)
  check_language(CUDA)
endif()
if(NOT CMAKE_CUDA_COMPILER)
  simclr_cuda_missing("the CUDA compiler (nvcc)")
endif()

if(NOT CUDAToolkit_ROOT)
  get_filename_component(_simclr_cuda_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  get_filename_component(CUDAToolkit_ROOT "${_simclr_cuda_bin}" DIRECTORY)
endif()
find_package(CUDAToolkit)
if(NOT CUDAToolkit_FOUND OR NOT TARGET CUDA::cublas)
  simclr_cuda_missing("the CUDA toolkit (cudart, cuBLAS)")
endif()

find_path(SIMCLR_NCCL_INCLUDE_DIR nccl.h
  HINTS ${NCCL_ROOT} ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_ROOT}
  PATH_SUFFIXES include)
find_library(SIMCLR_NCCL_LIBRARY NAMES nccl libnccl.so.2
  HINTS ${NCCL_ROOT} ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_ROOT}
  PATH_SUFFIXES lib lib64)
set(SIMCLR_NCCL_FOUND ON)
if(NOT SIMCLR_NCCL_INCLUDE_DIR OR NOT SIMCLR_NCCL_LIBRARY)
  # Only simclr_nccl needs it: one status line, the rest of the GPU path is built.
  set(SIMCLR_NCCL_FOUND OFF)
  message(STATUS "simclr: NCCL (nccl.h and libnccl) not found (NCCL_ROOT): simclr_nccl not built")
endif()

# Hopper (sm_90) machine code plus PTX that newer GPUs JIT. Override with -DCMAKE_CUDA_ARCHITECTURES.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual" CACHE STRING "CUDA architectures of the GPU path")
endif()
enable_language(CUDA)
set(SIMCLR_CUDA_ENABLED ON)

if(SIMCLR_NCCL_FOUND)
  add_library(simclr_nccl_lib UNKNOWN IMPORTED)
  set_target_properties(simclr_nccl_lib PROPERTIES
    IMPORTED_LOCATION "${SIMCLR_NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SIMCLR_NCCL_INCLUDE_DIR}")
endif()

# Flags of the GPU targets' own sources (host warnings through nvcc too).
add_library(simclr_cuda_flags INTERFACE)
target_compile_options(simclr_cuda_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Werror=cross-execution-space-call>
  $<$<AND:$<BOOL:${SIMCLR_WARNINGS_AS_ERRORS}>,$<COMPILE_LANGUAGE:CUDA>>:--Werror=all-warnings>)

# ---- layer 1 on the GPU: kernels, the tiled engine, the device loss ----
add_library(simclr_cuda
  cuda/engine/kernels.cu
  cuda/engine/device_engine.cpp
  cuda/frontend/device_loss.cpp
  src/c_api/c_api_cuda.cpp
  distributed/single_device_communicator.cpp)
add_library(simclr::cuda ALIAS simclr_cuda)
target_include_directories(simclr_cuda PRIVATE ${PROJECT_SOURCE_DIR}/cuda/engine)
target_link_libraries(simclr_cuda PUBLIC simclr CUDA::cudart CUDA::cublas
                                  PRIVATE $<BUILD_INTERFACE:simclr_flags> $<BUILD_INTERFACE:simclr_cuda_flags>)
target_compile_features(simclr_cuda PUBLIC cxx_std_17 cuda_std_17)
set_target_properties(simclr_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON EXPORT_NAME cuda
                                             CUDA_SEPARABLE_COMPILATION OFF)

# ---- layer 2 on the GPU: NCCL (bootstrapped over MPI when there is MPI; otherwise from an
# ncclUniqueId or an existing ncclComm_t, docs/gpu.md "NCCL without MPI") ----
if(SIMCLR_NCCL_FOUND)
  add_library(simclr_nccl distributed/nccl_communicator.cpp)
  add_library(simclr::nccl ALIAS simclr_nccl)
  target_link_libraries(simclr_nccl PUBLIC simclr_cuda simclr_nccl_lib
                                    PRIVATE $<BUILD_INTERFACE:simclr_flags>)
  if(SIMCLR_MPI_FOUND)
    target_link_libraries(simclr_nccl PUBLIC simclr_mpi)
    target_compile_definitions(simclr_nccl PUBLIC SIMCLR_NCCL_HAS_MPI=1)
  else()
    target_compile_definitions(simclr_nccl PUBLIC SIMCLR_NCCL_HAS_MPI=0)
    message(STATUS "simclr: simclr_nccl without MPI (no MPI_Comm constructor)")
  endif()
  set_target_properties(simclr_nccl PROPERTIES POSITION_INDEPENDENT_CODE ON EXPORT_NAME nccl)
endif()

# ---- layer 3: the GPU benchmark ----
if(SIMCLR_BUILD_TOOLS)
  add_executable(simclr-gpu-bench benchmarks/gpu_bench.cpp)
  target_include_directories(simclr-gpu-bench PRIVATE ${PROJECT_SOURCE_DIR}/cuda/engine)
  target_link_libraries(simclr-gpu-bench PRIVATE simclr_cuda simclr_flags)
  set_target_properties(simclr-gpu-bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endif()

if(SIMCLR_NCCL_FOUND)
  set(_simclr_nccl_note "NCCL ${SIMCLR_NCCL_LIBRARY}")
else()
  set(_simclr_nccl_note "no NCCL")
endif()
message(STATUS "simclr: GPU path on: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
               "${CMAKE_CUDA_ARCHITECTURES}, ${_simclr_nccl_note}")
