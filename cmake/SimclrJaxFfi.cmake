# XLA's FFI headers, as jax ships them (jax.ffi.include_dir()), for the GPU handlers of
# simclr_loss.jax outside the Python package's own build: the CUDA build compiles them
# (tests/gpu/CMakeLists.txt) and the emulation runs them (tests/gpu/emulated/CMakeLists.txt).
# SIMCLR_JAX_PYTHON: a Python with jax (default: python3 on PATH). Sets SIMCLR_JAX_GPU_FFI_INCLUDE, or
# leaves it empty with one status line when no jax is found.
if(DEFINED _SIMCLR_JAX_FFI_PROBED)
  return()
endif()
set(_SIMCLR_JAX_FFI_PROBED ON)
set(SIMCLR_JAX_PYTHON "python3" CACHE STRING "A Python with jax, whose FFI headers the GPU handlers of simclr_loss.jax are compiled against in the CUDA and emulation builds")
set(SIMCLR_JAX_GPU_FFI_INCLUDE "")
execute_process(COMMAND "${SIMCLR_JAX_PYTHON}" -c "import jax.ffi; print(jax.ffi.include_dir())"
                OUTPUT_VARIABLE _simclr_jax_inc OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE _simclr_jax_rc ERROR_QUIET)
if(_simclr_jax_rc EQUAL 0 AND EXISTS "${_simclr_jax_inc}/xla/ffi/api/ffi.h")
  set(SIMCLR_JAX_GPU_FFI_INCLUDE "${_simclr_jax_inc}")
  message(STATUS "simclr: XLA FFI headers for the JAX GPU handlers: ${SIMCLR_JAX_GPU_FFI_INCLUDE}")
else()
  message(STATUS "simclr: no jax for ${SIMCLR_JAX_PYTHON} (SIMCLR_JAX_PYTHON): the JAX GPU handlers are not compiled here")
endif()

# The handlers' compile settings: XLA's headers as SYSTEM, and GCC's -fpermissive for XLA's c_api.h
# (python/CMakeLists.txt says why).
function(simclr_use_jax_ffi target)
  target_include_directories(${target} SYSTEM PRIVATE "${SIMCLR_JAX_GPU_FFI_INCLUDE}")
  target_include_directories(${target} PRIVATE "${PROJECT_SOURCE_DIR}/python/src")
  target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fpermissive>)
endfunction()
