sdfutures_add_test(command_service_test command_service_test.cpp)
# Type=notify and WatchdogSec= need a program that speaks sd_notify: the daemon tests' helper (tests/daemon.cmake).
add_dependencies(command_service_test notify_helper)
target_compile_definitions(command_service_test PRIVATE SDFUTURES_NOTIFY_HELPER="$<TARGET_FILE:notify_helper>")
