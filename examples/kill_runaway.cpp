// A runaway task stopped by stopping its unit — what `systemctl stop` does from outside. The caller's future
// fails at once with UnitStopped instead of hanging.
//
//     sudo scripts/with-systemd build/examples/kill_runaway
#include <chrono>
#include <iostream>
#include <thread>

#include "sdfutures/sdfutures.hpp"

namespace {

long runaway(long start) {
    volatile long x = start;
    for (;;) x = x + 1;  // never returns
}

int quick(int x) { return x + 1; }

}  // namespace

int main() {
    try {
        sdfutures::TransientUnitPoolExecutor pool({{"CPUQuota", "50%"}}, {.max_workers = 1});
        std::cout << "unit " << pool.unit().name() << ": " << quick(41) << " == " << pool.submit(&quick, 41).get()
                  << "\n";
        auto runaway_result = pool.submit(&runaway, 0L);
        std::cout << "a runaway task is spinning; stopping the unit in 1 s\n";
        std::this_thread::sleep_for(std::chrono::seconds(1));

        // Anyone may do this: an operator with systemctl, a watchdog, or the program itself.
        auto t0 = std::chrono::steady_clock::now();
        sdfutures::Manager(pool.unit().bus()).stop_unit(pool.unit().name());
        try {
            runaway_result.get();
        } catch (const sdfutures::UnitStopped& e) {
            auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            std::cout << "the caller got UnitStopped " << ms << " ms after the stop: " << e.what() << "\n";
        }
        try {
            pool.submit(&quick, 1);
        } catch (const sdfutures::UnitStopped&) {
            std::cout << "and the pool refuses new work: its unit is gone\n";
        }
    } catch (const sdfutures::Error& e) {
        std::cerr << "kill_runaway: " << e.what() << "\n";
        return 1;
    }
}
