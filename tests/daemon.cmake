sdfutures_add_test(daemon_test daemon_test.cpp)
# The service the tests run in real units under the private manager: it uses <sdfutures/daemon.hpp>.
add_executable(notify_helper helpers/notify_helper.cpp)
target_link_libraries(notify_helper PRIVATE sdfutures sdfutures_warnings)
add_dependencies(daemon_test notify_helper)
target_compile_definitions(daemon_test PRIVATE SDFUTURES_NOTIFY_HELPER="$<TARGET_FILE:notify_helper>")
