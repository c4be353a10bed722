# The pool's dispatch policy (src/scheduler.hpp) and a task's status moves, as plain objects: no manager.
sdfutures_add_test(scheduler_test scheduler_test.cpp NO_MANAGER)
target_include_directories(scheduler_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
