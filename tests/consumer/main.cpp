// Uses sdfutures the way a user's program would, however it was brought in (tests/consumer/check.cmake): the
// installed CMake package, pkg-config, or add_subdirectory(). Exits 0 when everything checked works.
#include <sdfutures/sdfutures.hpp>

#include <cstdlib>
#include <exception>
#include <iostream>

int main() {
    try {
        sdfutures::Properties properties{{"MemoryMax", "64M"}, {"CPUQuota", "25%"}};
        const auto dbus = properties.to_dbus();
        const auto quota = sdfutures::parse_property("CPUQuota", "25%");
        if (dbus.size() < 2 || quota.empty()) {
            std::cerr << "consumer: unexpected property conversion\n";
            return 1;
        }
        std::cout << "consumer: CPUQuota=25% -> " << quota.front().get<0>() << '\n';

        if (std::getenv("SDFUTURES_BUS") == nullptr) {
            std::cout << "consumer: SDFUTURES_BUS is not set; skipping sdfutures::run\n";
            return 0;
        }
        const int answer = sdfutures::run({}, [] { return 6 * 7; });
        std::cout << "consumer: sdfutures::run returned " << answer << '\n';
        return answer == 42 ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "consumer: " << e.what() << '\n';
        return 1;
    }
}
