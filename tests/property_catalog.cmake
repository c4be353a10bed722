# The property catalogue (src/property_catalog.hpp), row by row against the real manager.
sdfutures_add_test(property_catalog_test property_catalog_test.cpp TIMEOUT 300)
target_include_directories(property_catalog_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
