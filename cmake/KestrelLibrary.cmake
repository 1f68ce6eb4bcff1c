# kestrel_library(NAME DEPS ...): one static library per src/ folder, from every .cpp in it.
# Sources are globbed (CONFIGURE_DEPENDS) so adding a file needs no CMake edit.
function(kestrel_library name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  add_library(kestrel_${name} STATIC ${srcs})
  target_include_directories(kestrel_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(kestrel_${name} PUBLIC ${ARG_DEPS})
endfunction()
