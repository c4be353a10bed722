# An owner holding thousands of descriptors (3,000 and 20,000): every way of running work still enters its unit
# and holds only the library's descriptors under the unit's RLIMIT_NOFILE.
sdfutures_add_test(descriptors_test descriptors_test.cpp)
