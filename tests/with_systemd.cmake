# scripts/with-systemd itself: the private manager every other test may run under is confined to its own cgroup
# subtree, and is torn down also when the script and all its descendants are SIGKILLed (ctest's timeout).
add_test(NAME with_systemd_test
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/with_systemd_test.sh ${PROJECT_SOURCE_DIR}/scripts/with-systemd)
set_tests_properties(with_systemd_test PROPERTIES TIMEOUT 120 LABELS systemd)
