# The entry plan (src/entry_plan.hpp), read from a cat of the test's own and encoded and decoded: no manager.
sdfutures_add_test(entry_plan_test entry_plan_test.cpp NO_MANAGER)
target_include_directories(entry_plan_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
