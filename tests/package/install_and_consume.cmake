# cmake -P script behind the test package.install_and_consume (see CMakeLists.txt for the -D inputs).
#   1. cmake --install the build into WORK_DIR/prefix, and check the layout;
#   2. configure + build tests/package/consumer against that prefix only (find_package(simclr));
#   3. run it on RANKS MPI ranks: the distributed loss must equal the local one; run the C program
#      of the C API;
#   4. when pkg-config is present, build the same source from simclr-mpi.pc alone and run it again.
cmake_minimum_required(VERSION 3.25)

foreach(var SIMCLR_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR MPIEXEC_EXECUTABLE RANKS)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_and_consume.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT SIMCLR_CONFIG)
  set(SIMCLR_CONFIG Release)
endif()

# Runs a command; stops the test with its output when it fails. The output is left in `out_var`.
function(run_step what out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "${what} failed (${rc}):\n  ${cmd}\n--- stdout\n${out}\n--- stderr\n${err}")
  endif()
  message(STATUS "${what}: ok")
  set(${out_var} "${out}${err}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# 1. install
run_step("cmake --install" out
  ${CMAKE_COMMAND} --install ${SIMCLR_BUILD_DIR} --prefix ${prefix} --config ${SIMCLR_CONFIG})
foreach(file include/simclr/loss.hpp include/simclr/options.hpp include/simclr/c_api.h include/simclr/communicator.hpp include/simclr/mpi/mpi_communicator.hpp include/simclr/build_config.hpp)
  if(NOT EXISTS ${prefix}/${file})
    message(FATAL_ERROR "installed tree lacks ${file}")
  endif()
endforeach()
# The library's own check macros and agreement record are not API.
if(EXISTS ${prefix}/include/simclr/detail)
  message(FATAL_ERROR "installed tree has include/simclr/detail, which is not public API")
endif()
file(GLOB_RECURSE config_file ${prefix}/*/simclrConfig.cmake)
file(GLOB_RECURSE version_file ${prefix}/*/simclrConfigVersion.cmake)
file(GLOB_RECURSE pc_file ${prefix}/*/pkgconfig/simclr.pc)
if(NOT config_file OR NOT version_file OR NOT pc_file)
  message(FATAL_ERROR "installed tree lacks simclrConfig.cmake, its version file or simclr.pc")
endif()

# Open MPI launches with the test's own flags (oversubscribe, root) from the environment list.
set(launch ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${RANKS} ${MPIEXEC_EXTRA})

# 2. the consumer project, against the prefix only
set(generator_args "")
if(CONSUMER_GENERATOR)
  set(generator_args -G ${CONSUMER_GENERATOR})
endif()
set(compiler_args "")
if(CONSUMER_CXX_COMPILER)
  set(compiler_args -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER})
endif()
run_step("configure consumer" out
  ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/consumer-build ${generator_args}
    ${compiler_args} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
string(FIND "${out}" "from ${prefix}/" found_at)
if(found_at EQUAL -1)
  message(FATAL_ERROR "the consumer did not find simclr in ${prefix}:\n${out}")
endif()
string(REGEX MATCH "simclr_consumer: components [^\n]*" components "${out}")
message(STATUS "${components}")
run_step("build consumer" out ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build --config Release)
file(GLOB_RECURSE consumer ${WORK_DIR}/consumer-build/simclr_consumer ${WORK_DIR}/consumer-build/simclr_consumer.exe)
if(NOT consumer)
  message(FATAL_ERROR "no simclr_consumer binary under ${WORK_DIR}/consumer-build")
endif()
list(GET consumer 0 consumer)

# 3. run it
run_step("consumer on ${RANKS} ranks (find_package)" out ${launch} ${consumer})
message(STATUS "${out}")
if(NOT out MATCHES "ok: simclr loss over ${RANKS} ranks")
  message(FATAL_ERROR "unexpected consumer output:\n${out}")
endif()
file(GLOB_RECURSE consumer_c ${WORK_DIR}/consumer-build/simclr_consumer_c ${WORK_DIR}/consumer-build/simclr_consumer_c.exe)
if(NOT consumer_c)
  message(FATAL_ERROR "no simclr_consumer_c binary under ${WORK_DIR}/consumer-build")
endif()
list(GET consumer_c 0 consumer_c)
run_step("C consumer of the C API" out ${consumer_c})
if(NOT out MATCHES "ok: simclr C API")
  message(FATAL_ERROR "unexpected C consumer output:\n${out}")
endif()

# 4. pkg-config
find_program(PKG_CONFIG_EXECUTABLE NAMES pkg-config pkgconf)
if(NOT PKG_CONFIG_EXECUTABLE OR NOT CONSUMER_CXX_COMPILER)
  message(STATUS "pkg-config check skipped (no pkg-config or no compiler given)")
  return()
endif()
get_filename_component(pc_dir ${pc_file} DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pc_dir}:$ENV{PKG_CONFIG_PATH}")
run_step("pkg-config --modversion simclr" version ${PKG_CONFIG_EXECUTABLE} --modversion simclr)
run_step("pkg-config simclr-mpi" flags ${PKG_CONFIG_EXECUTABLE} --cflags --libs simclr-mpi)
string(STRIP "${flags}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
run_step("build consumer from pkg-config" out
  ${CONSUMER_CXX_COMPILER} -O2 ${CONSUMER_SOURCE_DIR}/main.cpp -o ${WORK_DIR}/simclr_consumer_pc ${flags})
run_step("consumer on ${RANKS} ranks (pkg-config)" out ${launch} ${WORK_DIR}/simclr_consumer_pc)
if(NOT out MATCHES "ok: simclr loss over ${RANKS} ranks")
  message(FATAL_ERROR "unexpected consumer output (pkg-config build):\n${out}")
endif()
