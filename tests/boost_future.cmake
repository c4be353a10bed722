# sdfutures::boost exists only where Boost.Thread was found (scripts/install-deps installs it).
if(TARGET sdfutures::boost)
  sdfutures_add_test(boost_future_test boost_future_test.cpp)
  target_link_libraries(boost_future_test PRIVATE sdfutures::boost)
endif()
