# attnscore_grpc_proto_library(): C++ messages and gRPC stubs from .proto files.
include_guard(GLOBAL)

# attnscore_grpc_proto_library(TARGET ROOT dir PROTOS a.proto...)
# A static library of the messages and gRPC stubs generated (protoc + grpc_cpp_plugin) from
# PROTOS, paths relative to ROOT; consumers include "<path>.pb.h" / "<path>.grpc.pb.h".
function(attnscore_grpc_proto_library target)
  cmake_parse_arguments(P "" "ROOT" "PROTOS" ${ARGN})
  set(gen_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}_gen")
  set(sources)
  foreach(proto ${P_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" stem "${proto}")
    set(outputs "${gen_dir}/${stem}.pb.cc" "${gen_dir}/${stem}.pb.h"
                "${gen_dir}/${stem}.grpc.pb.cc" "${gen_dir}/${stem}.grpc.pb.h")
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND ${CMAKE_COMMAND} -E make_directory "${gen_dir}"
      COMMAND protobuf::protoc --proto_path=${P_ROOT} --cpp_out=${gen_dir} --grpc_out=${gen_dir}
              --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin> ${P_ROOT}/${proto}
      DEPENDS ${P_ROOT}/${proto} protobuf::protoc gRPC::grpc_cpp_plugin
      COMMENT "protoc: ${proto}"
      VERBATIM)
    list(APPEND sources ${outputs})
  endforeach()
  add_library(${target} ${sources})
  # Generated code is not ours to lint or warn about: its headers are SYSTEM for consumers, and
  # attnscore_apply_warnings (AttnscoreWarnings.cmake) skips the library itself.
  target_include_directories(${target} SYSTEM PUBLIC $<BUILD_INTERFACE:${gen_dir}>)
  set_target_properties(${target} PROPERTIES ATTNSCORE_GENERATED TRUE)
  target_link_libraries(${target} PUBLIC gRPC::grpc++ protobuf::libprotobuf)
endfunction()
