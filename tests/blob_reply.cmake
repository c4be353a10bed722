# Large blob results without copies (include/sdfutures/detail/blob_reply.hpp): encoding and decoding, and both
# ways of sending one (the pool's channel, a process's reply pipe) under injected EINTR, EAGAIN and short writes.
# It reaches into src/ for the channel and the seam. No manager.
sdfutures_add_test(blob_reply_test blob_reply_test.cpp NO_MANAGER)
target_include_directories(blob_reply_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(blob_reply_test PRIVATE sdfutures_syscall_injection)
