sdfutures_add_test(futures_test futures_test.cpp TIMEOUT 600)
