# The fault soak: about 12 s on 2 cores (also under ThreadSanitizer); its own bounds fail it long before this timeout.
sdfutures_add_test(soak_test soak_test.cpp SOAK TIMEOUT 900)
