# attnscore_apply_warnings(dir): -Wall -Wextra (and -Werror when ATTNSCORE_WERROR is ON) on every
# library and executable defined in dir and below. Called once, at the end of the root
# CMakeLists.txt, so that no folder has to remember it.
#
# Left out: imported targets (not compiled here) and the generated proto libraries
# (attnscore_grpc_proto_library sets ATTNSCORE_GENERATED): protoc's output is not ours to fix.
# Third-party headers do not warn because they are SYSTEM include directories: imported targets'
# (gRPC, protobuf, absl, GTest, ...) are SYSTEM by default, Debian's LibTorch lives in /usr/include
# (see attnscore_libtorch in AttnscoreDeps.cmake), and the generated headers are added SYSTEM.
include_guard(GLOBAL)

function(attnscore_warning_options out)
  set(options -Wall -Wextra)
  if(ATTNSCORE_WERROR)
    list(APPEND options -Werror)
  endif()
  set(${out} ${options} PARENT_SCOPE)
endfunction()

function(attnscore_apply_warnings dir)
  attnscore_warning_options(options)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(type ${target} TYPE)
    get_target_property(generated ${target} ATTNSCORE_GENERATED)
    if(type MATCHES "^(STATIC_LIBRARY|SHARED_LIBRARY|MODULE_LIBRARY|OBJECT_LIBRARY|EXECUTABLE)$"
       AND NOT generated)
      # C++ only: nvcc (the CUDA kernels) takes none of these.
      foreach(option IN LISTS options)
        target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${option}>)
      endforeach()
    endif()
  endforeach()
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(subdir IN LISTS subdirs)
    attnscore_apply_warnings("${subdir}")
  endforeach()
endfunction()
