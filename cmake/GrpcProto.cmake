# vfu_add_grpc_proto(TARGET name PROTOS a.proto b.proto [IMPORT_DIR dir])
# Generates C++ message and gRPC service code for the given .proto files with Debian's protoc
# and grpc_cpp_plugin, and builds it as a static library `name`. Include the generated headers
# by their path relative to IMPORT_DIR (default: the directory of the first proto), e.g.
# #include "control.grpc.pb.h" or "api/v1beta1/api.grpc.pb.h".
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(VFU_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

function(vfu_add_grpc_proto)
  cmake_parse_arguments(ARG "" "TARGET;IMPORT_DIR" "PROTOS" ${ARGN})
  list(GET ARG_PROTOS 0 first)
  if(NOT ARG_IMPORT_DIR)
    get_filename_component(ARG_IMPORT_DIR ${first} ABSOLUTE)
    get_filename_component(ARG_IMPORT_DIR ${ARG_IMPORT_DIR} DIRECTORY)
  else()
    get_filename_component(ARG_IMPORT_DIR ${ARG_IMPORT_DIR} ABSOLUTE)
  endif()
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/${ARG_TARGET}_gen)
  file(MAKE_DIRECTORY ${out_dir})
  set(sources)
  foreach(proto ${ARG_PROTOS})
    get_filename_component(abs ${proto} ABSOLUTE)
    file(RELATIVE_PATH rel ${ARG_IMPORT_DIR} ${abs})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    set(generated ${out_dir}/${stem}.pb.cc ${out_dir}/${stem}.pb.h
                  ${out_dir}/${stem}.grpc.pb.cc ${out_dir}/${stem}.grpc.pb.h)
    add_custom_command(
      OUTPUT ${generated}
      COMMAND protobuf::protoc --proto_path=${ARG_IMPORT_DIR} --cpp_out=${out_dir}
              --grpc_out=${out_dir} --plugin=protoc-gen-grpc=${VFU_GRPC_CPP_PLUGIN} ${abs}
      DEPENDS ${abs}
      COMMENT "protoc ${rel}")
    list(APPEND sources ${out_dir}/${stem}.pb.cc ${out_dir}/${stem}.grpc.pb.cc)
  endforeach()
  add_library(${ARG_TARGET} STATIC ${sources})
  # Generated code is not ours to lint or warn about.
  target_compile_options(${ARG_TARGET} PRIVATE -w)
  target_include_directories(${ARG_TARGET} SYSTEM PUBLIC ${out_dir})
  target_link_libraries(${ARG_TARGET} PUBLIC gRPC::grpc++ protobuf::libprotobuf)
endfunction()
