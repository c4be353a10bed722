sdfutures_add_test(hostile_test hostile_test.cpp TIMEOUT 600)
