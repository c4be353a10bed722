# The syscall seam (src/sys.hpp): failures injected into the channel's and the pool's system calls.
# sdfutures_syscall_injection installs the failing functions; it reaches into src/ for the seam itself.
add_library(sdfutures_syscall_injection STATIC support/syscall_injection.cpp)
target_include_directories(sdfutures_syscall_injection PUBLIC ${CMAKE_CURRENT_SOURCE_DIR} PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(sdfutures_syscall_injection PUBLIC sdfutures PRIVATE sdfutures_warnings)

# The channel alone, on socket pairs: no manager.
sdfutures_add_test(channel_test channel_test.cpp NO_MANAGER)
target_include_directories(channel_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(channel_test PRIVATE sdfutures_syscall_injection)

# A pool of each start method under injected EINTR, EAGAIN and short sends.
sdfutures_add_test(syscall_seam_test syscall_seam_test.cpp)
target_link_libraries(syscall_seam_test PRIVATE sdfutures_syscall_injection)
