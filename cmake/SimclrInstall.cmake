# Install and export (included from the top-level CMakeLists.txt, after every target is defined).
#
#   cmake --install <build> [--prefix P] installs
#     P/include/simclr/...                         the public headers (not detail/)
#     P/lib/libsimclr.a, libsimclr_mpi.a, ...       the libraries (and the cuda/nccl ones when built)
#     P/lib/cmake/simclr/simclrConfig.cmake        find_package(simclr [COMPONENTS mpi cuda nccl])
#     P/lib/pkgconfig/simclr.pc (+ simclr-mpi.pc)  pkg-config, relocatable
#     P/bin/simclr-loss, simclr-train              the commands, when they were built
#
# Exported targets: simclr::simclr (core), simclr::mpi, and simclr::cuda / simclr::nccl only when the
# targets simclr_cuda / simclr_nccl exist. The config file finds every dependency of what was built
# (Aluminum's pattern): Eigen3 and nlohmann_json (public), OpenMP (private to the core, but a static
# library's private dependencies must be linked by its consumer), MPI, CUDA.

include(CMakePackageConfigHelpers)
include(CheckCXXSourceCompiles)

set(SIMCLR_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/simclr CACHE STRING
    "Where simclrConfig.cmake is installed, relative to the prefix")
mark_as_advanced(SIMCLR_INSTALL_CMAKEDIR)

# The public headers need C++17; say so to consumers (simclr_flags, which also says it, is build-only).
target_compile_features(simclr INTERFACE cxx_std_17)

# Eigen's allocation alignment is fixed for every consumer by the PUBLIC EIGEN_MAX_ALIGN_BYTES=64 on the
# simclr target (top-level CMakeLists.txt), so it is exported with the target.

# ---- what is installed ----
# One export set per component, so that a CPU-only consumer never needs MPI or CUDA to load the core,
# and a component whose dependencies are missing downstream fails alone, by name.
set(_simclr_components "")
install(TARGETS simclr EXPORT simclrTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT simclrTargets NAMESPACE simclr:: DESTINATION ${SIMCLR_INSTALL_CMAKEDIR})
foreach(_component IN ITEMS mpi cuda nccl)
  if(TARGET simclr_${_component})
    set_target_properties(simclr_${_component} PROPERTIES EXPORT_NAME ${_component})
    install(TARGETS simclr_${_component} EXPORT simclr_${_component}Targets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
      INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    install(EXPORT simclr_${_component}Targets NAMESPACE simclr::
      DESTINATION ${SIMCLR_INSTALL_CMAKEDIR})
    list(APPEND _simclr_components ${_component})
  endif()
endforeach()

# Headers of a backend that was not built are left out: including them could not work.
set(_simclr_header_excludes "")
if(NOT TARGET simclr_mpi)
  list(APPEND _simclr_header_excludes PATTERN "mpi" EXCLUDE)
endif()
if(NOT TARGET simclr_cuda)
  list(APPEND _simclr_header_excludes PATTERN "cuda" EXCLUDE PATTERN "*cuda*" EXCLUDE)
endif()
if(NOT TARGET simclr_nccl)
  list(APPEND _simclr_header_excludes PATTERN "nccl" EXCLUDE)
endif()
# detail/ (check macros, the agreement record) is the library's own business: never installed.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/simclr
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h" PATTERN "*.cuh"
  PATTERN "detail" EXCLUDE PATTERN "*.in" EXCLUDE
  ${_simclr_header_excludes})
install(FILES ${PROJECT_BINARY_DIR}/include/simclr/build_config.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/simclr)

foreach(_program IN ITEMS simclr-loss simclr-train)
  if(TARGET ${_program})
    install(TARGETS ${_program} OPTIONAL RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

# ---- simclrConfig.cmake ----
# find_package(simclr [COMPONENTS mpi cuda nccl]): the core always; each requested component, or with
# no COMPONENTS every component that was built and whose dependencies are found here. A requested
# component that cannot be loaded makes find_package fail with simclr_<c>_FOUND false.
get_target_property(_simclr_type simclr TYPE)
set(_simclr_config "@PACKAGE_INIT@

# simclr ${PROJECT_VERSION}. Components built: ${_simclr_components}.
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.3 NO_MODULE)
find_dependency(nlohmann_json 3.9)
")
if(_simclr_type STREQUAL "STATIC_LIBRARY")
  string(APPEND _simclr_config "# Private to the core, but a static library's consumer links it.
find_dependency(OpenMP COMPONENTS CXX)
")
endif()
string(APPEND _simclr_config [=[
include("${CMAKE_CURRENT_LIST_DIR}/simclrTargets.cmake")

set(_simclr_wanted ${simclr_FIND_COMPONENTS})
if(NOT _simclr_wanted)
  set(_simclr_wanted mpi cuda nccl)
endif()
if("nccl" IN_LIST _simclr_wanted)
  list(APPEND _simclr_wanted mpi cuda)  # what simclr::nccl links
endif()
foreach(_simclr_c IN ITEMS mpi cuda nccl)
  set(simclr_${_simclr_c}_FOUND FALSE)
  if(NOT _simclr_c IN_LIST _simclr_wanted
     OR NOT EXISTS "${CMAKE_CURRENT_LIST_DIR}/simclr_${_simclr_c}Targets.cmake")
    continue()
  endif()
  # A dependency search speaks only for a component that was asked for by name.
  set(_simclr_quiet QUIET)
  if(_simclr_c IN_LIST simclr_FIND_COMPONENTS AND NOT simclr_FIND_QUIETLY)
    set(_simclr_quiet "")
  endif()
  set(_simclr_deps_found TRUE)
  if(_simclr_c STREQUAL "mpi")
    find_package(MPI ${_simclr_quiet} COMPONENTS CXX)
    set(_simclr_deps_found ${MPI_CXX_FOUND})
  elseif(_simclr_c STREQUAL "cuda")
    find_package(CUDAToolkit ${_simclr_quiet})
    if(NOT TARGET CUDA::cudart OR NOT TARGET CUDA::cublas)
      set(_simclr_deps_found FALSE)
    endif()
  elseif(_simclr_c STREQUAL "nccl")
    if(NOT simclr_mpi_FOUND OR NOT simclr_cuda_FOUND)
      set(_simclr_deps_found FALSE)
    elseif(NOT TARGET simclr_nccl_lib)
      # The NCCL library simclr::nccl was built against; NCCL_ROOT overrides where it is looked for.
      find_path(SIMCLR_NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT} ENV NCCL_ROOT "@SIMCLR_BUILT_NCCL_INCLUDE_DIR@"
                ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
      find_library(SIMCLR_NCCL_LIBRARY nccl HINTS ${NCCL_ROOT} ENV NCCL_ROOT "@SIMCLR_BUILT_NCCL_LIBRARY_DIR@"
                   ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
      if(SIMCLR_NCCL_INCLUDE_DIR AND SIMCLR_NCCL_LIBRARY)
        add_library(simclr_nccl_lib UNKNOWN IMPORTED)
        set_target_properties(simclr_nccl_lib PROPERTIES IMPORTED_LOCATION "${SIMCLR_NCCL_LIBRARY}"
                              INTERFACE_INCLUDE_DIRECTORIES "${SIMCLR_NCCL_INCLUDE_DIR}")
      else()
        set(_simclr_deps_found FALSE)
      endif()
    endif()
  endif()
  if(_simclr_deps_found)
    include("${CMAKE_CURRENT_LIST_DIR}/simclr_${_simclr_c}Targets.cmake")
    set(simclr_${_simclr_c}_FOUND TRUE)
  endif()
endforeach()
unset(_simclr_wanted)
unset(_simclr_quiet)
unset(_simclr_deps_found)
check_required_components(simclr)
]=])
set(SIMCLR_BUILT_NCCL_INCLUDE_DIR "")
set(SIMCLR_BUILT_NCCL_LIBRARY_DIR "")
if(TARGET simclr_nccl AND SIMCLR_NCCL_LIBRARY)
  set(SIMCLR_BUILT_NCCL_INCLUDE_DIR "${SIMCLR_NCCL_INCLUDE_DIR}")
  get_filename_component(SIMCLR_BUILT_NCCL_LIBRARY_DIR "${SIMCLR_NCCL_LIBRARY}" DIRECTORY)
endif()
set(_simclr_config_in ${PROJECT_BINARY_DIR}/simclrConfig.cmake.in)
file(WRITE ${_simclr_config_in} "${_simclr_config}")
configure_package_config_file(${_simclr_config_in} ${PROJECT_BINARY_DIR}/simclrConfig.cmake
  INSTALL_DESTINATION ${SIMCLR_INSTALL_CMAKEDIR})
# 0.x: a new minor version may change the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/simclrConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/simclrConfig.cmake ${PROJECT_BINARY_DIR}/simclrConfigVersion.cmake
  DESTINATION ${SIMCLR_INSTALL_CMAKEDIR})

# ---- pkg-config (relocatable: the prefix is found from the .pc file's own place) ----
set(_simclr_pcdir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
file(RELATIVE_PATH _simclr_pc_to_prefix /prefix/${_simclr_pcdir} /prefix)
set(_simclr_cflags "-I\${includedir}")
string(APPEND _simclr_cflags " -DEIGEN_MAX_ALIGN_BYTES=64")  # as the simclr target (CMakeLists.txt)
# A static core needs OpenMP at the consumer's link; pkg-config users rarely pass --static, so it goes
# in Libs rather than Libs.private.
set(_simclr_openmp_libs "")
if(_simclr_type STREQUAL "STATIC_LIBRARY")
  set(_simclr_openmp_libs " ${OpenMP_CXX_FLAGS}")
endif()
set(_simclr_pc_head "prefix=\${pcfiledir}/${_simclr_pc_to_prefix}
libdir=\${prefix}/${CMAKE_INSTALL_LIBDIR}
includedir=\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}
")
file(WRITE ${PROJECT_BINARY_DIR}/pkgconfig/simclr.pc "${_simclr_pc_head}
Name: simclr
Description: ${PROJECT_DESCRIPTION} (core)
Version: ${PROJECT_VERSION}
Requires: eigen3 >= 3.3, nlohmann_json >= 3.9
Libs: -L\${libdir} -lsimclr${_simclr_openmp_libs}
Cflags: ${_simclr_cflags} -std=c++17
")
install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/simclr.pc DESTINATION ${_simclr_pcdir})
if(TARGET simclr_mpi)
  # MPI itself has no portable pkg-config name; its flags are written out as FindMPI found them.
  list(JOIN MPI_CXX_LIBRARIES " " _simclr_mpi_libs)
  set(_simclr_mpi_cflags "")
  foreach(_dir IN LISTS MPI_CXX_INCLUDE_DIRS)
    string(APPEND _simclr_mpi_cflags " -I${_dir}")
  endforeach()
  file(WRITE ${PROJECT_BINARY_DIR}/pkgconfig/simclr-mpi.pc "${_simclr_pc_head}
Name: simclr-mpi
Description: The MPI communicator of simclr
Version: ${PROJECT_VERSION}
Requires: simclr = ${PROJECT_VERSION}
Libs: -L\${libdir} -lsimclr_mpi ${_simclr_mpi_libs}
Cflags:${_simclr_mpi_cflags}
")
  install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/simclr-mpi.pc DESTINATION ${_simclr_pcdir})
endif()
