# Locates the ONNX Runtime C headers (the pip wheel ships none) and sets ORT_INCLUDE_DIR.
#
# Order: ORT_INCLUDE_DIR (CMake variable, then environment variable) wins; otherwise the pinned copy cached
# in <repo>/.cache/ort-headers/ (git-ignored, carried to offline machines); otherwise fetch it once with
# `npm pack` of a pinned package that carries the official headers (ORT API version 29).

set(CORTEX_ORT_NPM_PACKAGE "com.github.asus4.onnxruntime@0.4.9")
set(CORTEX_ORT_NPM_SHA256 "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d")
set(CORTEX_ORT_NPM_HEADERS
    "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers")
set(CORTEX_ORT_HEADER_CACHE "${CMAKE_CURRENT_SOURCE_DIR}/.cache/ort-headers")

function(cortex_ort_headers_ok dir result)
  if(EXISTS "${dir}/onnxruntime_c_api.h" AND EXISTS "${dir}/onnxruntime_ep_c_api.h")
    set(${result} TRUE PARENT_SCOPE)
  else()
    set(${result} FALSE PARENT_SCOPE)
  endif()
endfunction()

function(cortex_fetch_ort_headers)
  find_program(CORTEX_NPM npm)
  if(NOT CORTEX_NPM)
    message(FATAL_ERROR
      "Cortex needs the ONNX Runtime C headers (onnxruntime_c_api.h, onnxruntime_ep_c_api.h); the onnxruntime "
      "pip wheel has none. npm was not found to fetch them (${CORTEX_ORT_NPM_PACKAGE}). Either install npm and "
      "build again, or set ORT_INCLUDE_DIR (environment or -DORT_INCLUDE_DIR=...) to a directory holding the "
      "ONNX Runtime headers of API version >= 29, or copy them into ${CORTEX_ORT_HEADER_CACHE}.")
  endif()
  set(work "${CMAKE_CURRENT_BINARY_DIR}/ort-headers-fetch")
  file(REMOVE_RECURSE "${work}")
  file(MAKE_DIRECTORY "${work}")
  message(STATUS "Cortex: fetching ONNX Runtime headers: npm pack ${CORTEX_ORT_NPM_PACKAGE}")
  execute_process(COMMAND "${CORTEX_NPM}" pack "${CORTEX_ORT_NPM_PACKAGE}" --silent
                  WORKING_DIRECTORY "${work}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  file(GLOB tarball "${work}/*.tgz")
  if(NOT rc EQUAL 0 OR NOT tarball)
    message(FATAL_ERROR
      "Cortex: `npm pack ${CORTEX_ORT_NPM_PACKAGE}` failed (${rc}): ${err}\n"
      "Set ORT_INCLUDE_DIR to a directory holding the ONNX Runtime C headers (API version >= 29), "
      "or copy them into ${CORTEX_ORT_HEADER_CACHE}.")
  endif()
  file(SHA256 "${tarball}" digest)
  if(NOT digest STREQUAL CORTEX_ORT_NPM_SHA256)
    message(FATAL_ERROR "Cortex: ${tarball} has sha256 ${digest}, expected ${CORTEX_ORT_NPM_SHA256}.")
  endif()
  execute_process(COMMAND "${CMAKE_COMMAND}" -E tar xzf "${tarball}" -- "${CORTEX_ORT_NPM_HEADERS}"
                  WORKING_DIRECTORY "${work}" RESULT_VARIABLE rc)
  cortex_ort_headers_ok("${work}/${CORTEX_ORT_NPM_HEADERS}" ok)
  if(NOT rc EQUAL 0 OR NOT ok)
    message(FATAL_ERROR "Cortex: ${tarball} holds no ONNX Runtime headers under ${CORTEX_ORT_NPM_HEADERS}.")
  endif()
  # Move into place whole, so an interrupted fetch never leaves a half-filled cache.
  file(REMOVE_RECURSE "${CORTEX_ORT_HEADER_CACHE}")
  get_filename_component(cache_parent "${CORTEX_ORT_HEADER_CACHE}" DIRECTORY)
  file(MAKE_DIRECTORY "${cache_parent}")
  file(RENAME "${work}/${CORTEX_ORT_NPM_HEADERS}" "${CORTEX_ORT_HEADER_CACHE}")
  file(WRITE "${CORTEX_ORT_HEADER_CACHE}/SOURCE.txt"
       "npm ${CORTEX_ORT_NPM_PACKAGE} (sha256 ${CORTEX_ORT_NPM_SHA256}): ${CORTEX_ORT_NPM_HEADERS}\n")
  file(REMOVE_RECURSE "${work}")
endfunction()

if(NOT ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR} AND NOT "$ENV{ORT_INCLUDE_DIR}" STREQUAL "")
  set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
endif()

if(ORT_INCLUDE_DIR)
  cortex_ort_headers_ok("${ORT_INCLUDE_DIR}" ok)
  if(NOT ok)
    message(FATAL_ERROR
      "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} does not contain onnxruntime_c_api.h and onnxruntime_ep_c_api.h. "
      "Point it at the ONNX Runtime C headers (API version >= 29), or unset it to fetch them with npm.")
  endif()
else()
  cortex_ort_headers_ok("${CORTEX_ORT_HEADER_CACHE}" ok)
  if(NOT ok)
    cortex_fetch_ort_headers()
  endif()
  set(ORT_INCLUDE_DIR "${CORTEX_ORT_HEADER_CACHE}")
endif()
message(STATUS "Cortex: ONNX Runtime headers: ${ORT_INCLUDE_DIR}")
