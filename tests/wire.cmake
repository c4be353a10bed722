sdfutures_add_test(wire_test wire_test.cpp NO_MANAGER)
