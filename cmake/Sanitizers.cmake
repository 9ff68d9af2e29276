# Sanitizer and fuzzing builds (make asan, make tsan, make fuzz; see README "Sanitizers and
# fuzzing"). Each is its own build tree: the flags apply to every target of the tree.
#   -DDINO_SANITIZE=address,undefined   ASan + UBSan (build-asan)
#   -DDINO_SANITIZE=thread              TSan (build-tsan)
#   -DDINO_FUZZ=ON                      clang + libFuzzer + ASan/UBSan, fuzz targets (build-fuzz)
set(DINO_SANITIZE "" CACHE STRING
  "Sanitizers for every target: address,undefined or thread (empty: none)")
option(DINO_FUZZ "Build the libFuzzer targets in fuzz/ (needs clang; see make fuzz)" OFF)

if(DINO_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DINO_FUZZ needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++")
  endif()
  # The libraries get coverage instrumentation without libFuzzer's main(); the fuzz targets
  # link with -fsanitize=fuzzer (fuzz/CMakeLists.txt).
  if(DINO_SANITIZE STREQUAL "")
    set(DINO_SANITIZE address,undefined)
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

if(NOT DINO_SANITIZE STREQUAL "")
  # Line tables for readable reports; frame pointers for fast, complete stack traces.
  add_compile_options(-fsanitize=${DINO_SANITIZE} -fno-omit-frame-pointer -g1)
  add_link_options(-fsanitize=${DINO_SANITIZE})
  if(DINO_SANITIZE MATCHES "undefined")
    # A UBSan finding fails the test (by default UBSan prints and carries on).
    add_compile_options(-fno-sanitize-recover=undefined)
  endif()
  # The test binaries run under the sanitizer options of the test run (make asan/tsan export
  # them), not at build time: gtest_discover_tests lists the tests when ctest starts.
  set(CMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE PRE_TEST)
endif()
