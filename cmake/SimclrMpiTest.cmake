# simclr_add_mpi_test(<target> RANKS n... [TIMEOUT s] [ARGS ...])
# Registers the GoogleTest binary <target> under mpiexec at each process count, labelled "mpi".
# --oversubscribe lets 4 ranks run on 2 cores; running as root (containers, CI) needs Open MPI's consent.
function(simclr_add_mpi_test target)
  cmake_parse_arguments(ARG "" "TIMEOUT" "RANKS;ARGS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set(extra "")
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE version ERROR_QUIET)
  if(version MATCHES "Open MPI|OpenRTE")
    list(APPEND extra --oversubscribe --allow-run-as-root --bind-to none)
  endif()
  foreach(n IN LISTS ARG_RANKS)
    add_test(NAME ${target}.np${n}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} ${extra} ${MPIEXEC_PREFLAGS}
              $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
    set_tests_properties(${target}.np${n} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS mpi PROCESSORS 1
      ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  endforeach()
endfunction()
