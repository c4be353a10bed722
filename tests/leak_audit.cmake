sdfutures_add_test(leak_audit_test leak_audit_test.cpp TIMEOUT 120)
