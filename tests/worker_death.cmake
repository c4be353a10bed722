# What a worker's death means for its task (src/worker_death.hpp), from the facts alone: no manager.
sdfutures_add_test(worker_death_test worker_death_test.cpp NO_MANAGER)
target_include_directories(worker_death_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
