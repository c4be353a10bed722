#pragma once
// Units a test starts by hand, gone at the end of the test whichever way it ends.

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "sdfutures/manager.hpp"

namespace sdfutures::testing {

// Stops units in the order given, forgets that they failed, and waits until the manager has unloaded them.
class UnitCleanup {
public:
    UnitCleanup(Manager& manager, std::vector<std::string> units) : manager_(manager), units_(std::move(units)) {}
    UnitCleanup(Manager& manager, std::string unit) : UnitCleanup(manager, std::vector<std::string>{std::move(unit)}) {}
    ~UnitCleanup() {
        for (const auto& unit : units_) {
            try {
                manager_.stop_unit(unit);
            } catch (const Error&) {
            }
            try {
                manager_.reset_failed_unit(unit);  // a failed transient unit stays loaded until its failure is reset
            } catch (const Error&) {
            }
        }
        for (const auto& unit : units_)
            EXPECT_TRUE(manager_.wait_unit_gone(unit, std::chrono::seconds(30))) << unit << " is still loaded";
    }
    UnitCleanup(const UnitCleanup&) = delete;
    UnitCleanup& operator=(const UnitCleanup&) = delete;

private:
    Manager& manager_;
    std::vector<std::string> units_;
};

}  // namespace sdfutures::testing
