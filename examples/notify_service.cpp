// Both sides of a Type=notify service. Run plainly, it starts itself as a transient unit (Type=notify,
// NotifyAccess=main, WatchdogSec=2s) and shows what systemd says of the unit while it starts and once it is ready;
// inside the unit (--service), it loads for a while, says READY=1 with a status, and feeds its watchdog from a
// thread of its own until it is stopped.
//
//     sudo scripts/with-systemd build/examples/notify_service
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>

#include "sdfutures/sdfutures.hpp"

namespace {

using namespace std::chrono_literals;
namespace daemon = sdfutures::daemon;

volatile std::sig_atomic_t stop_requested = 0;

int service() {
    std::signal(SIGTERM, [](int) { stop_requested = 1; });
    daemon::Watchdog watchdog;  // pings every WatchdogSec/2 until destroyed
    for (int step = 1; step <= 3; ++step) {
        daemon::notify_status("loading " + std::to_string(step) + "/3");
        std::this_thread::sleep_for(300ms);
    }
    daemon::notify(daemon::Notification().ready().status("serving; the watchdog every " +
                                                         std::to_string(watchdog.interval().value_or(0us).count() / 2000) + " ms"));
    while (!stop_requested) std::this_thread::sleep_for(50ms);  // the work; SIGTERM from `systemctl stop` ends it
    daemon::notify(daemon::Notification().stopping().status("shutting down"));
    return 0;
}

std::string status_of(const sdfutures::Unit& unit) {
    return unit.active_state() + " \"" + unit.property_as<std::string>("org.freedesktop.systemd1.Service", "StatusText") +
           "\"";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "--service") return service();
    try {
        sdfutures::Manager manager;
        std::string name = "notify-service-example-" + std::to_string(::getpid()) + ".service";
        std::string self = std::filesystem::read_symlink("/proc/self/exe");
        auto start = manager.start_transient_unit_async(
            name, {{"Type", "notify"}, {"NotifyAccess", "main"}, {"WatchdogSec", "2s"}, {"ExecStart", self + " --service"}});
        std::this_thread::sleep_for(500ms);
        sdfutures::Unit unit(manager.bus(), name);
        std::cout << "while it starts: " << status_of(unit) << "\n";
        start.wait(30s);  // the start job ends when the service says READY=1
        std::cout << "once ready:      " << status_of(unit) << "\n";
        std::this_thread::sleep_for(5s);  // 2.5 x WatchdogSec: only the Watchdog's pings keep it running
        std::cout << "5 s later:       " << status_of(unit) << "\n";
        manager.stop_unit(name);
        manager.wait_unit_gone(name, 30s);
        std::cout << "stopped\n";
    } catch (const sdfutures::Error& e) {
        std::cerr << "notify_service: " << e.what() << "\n";
        return 1;
    }
}
