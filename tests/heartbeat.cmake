sdfutures_add_test(heartbeat_test heartbeat_test.cpp TIMEOUT 600)
