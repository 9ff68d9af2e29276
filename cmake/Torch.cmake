# LibTorch from Debian's libtorch-dev, exposed as one interface target `dino::torch` whose
# headers are SYSTEM includes, so that -Wall -Wextra -Werror applies to our code only.
find_package(Torch REQUIRED)
add_library(dino_torch INTERFACE)
add_library(dino::torch ALIAS dino_torch)
target_include_directories(dino_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_link_libraries(dino_torch INTERFACE ${TORCH_LIBRARIES})
target_compile_options(dino_torch INTERFACE ${TORCH_CXX_FLAGS})
