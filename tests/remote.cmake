sdfutures_add_test(remote_test remote_test.cpp)
