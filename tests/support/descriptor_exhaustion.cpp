#include "support/descriptor_exhaustion.hpp"

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <system_error>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"

namespace sdfutures::testing {

// The soft limit at which exactly `allowed` more descriptors can be opened: a new descriptor takes the lowest
// free number, and the limit bounds that number, so the answer is the allowed-th free number (there may be
// free numbers below open ones, and open ones above any limit chosen here, which stay usable).
rlim_t limit_allowing(int allowed) {
    std::set<int> open;
    if (DIR* dir = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(dir))
            if (e->d_name[0] != '.') open.insert(std::atoi(e->d_name));
        open.erase(dirfd(dir));  // the listing's own descriptor, free again once it is closed
        closedir(dir);
    }
    int free_seen = 0;
    for (int fd = 0;; ++fd) {
        if (open.count(fd) != 0) continue;
        if (free_seen++ == allowed) return static_cast<rlim_t>(fd);
    }
}

SoftDescriptorLimit::SoftDescriptorLimit(rlim_t soft) {
    if (getrlimit(RLIMIT_NOFILE, &saved_) != 0) throw std::runtime_error("getrlimit(RLIMIT_NOFILE) failed");
    rlimit lowered = saved_;
    lowered.rlim_cur = soft;
    // A limit that did not take would turn every sweep into a run without one.
    if (setrlimit(RLIMIT_NOFILE, &lowered) != 0) throw std::runtime_error("setrlimit(RLIMIT_NOFILE) failed");
}

SoftDescriptorLimit::~SoftDescriptorLimit() { setrlimit(RLIMIT_NOFILE, &saved_); }

ExhaustionSweep sweep_descriptor_exhaustion(Manager& manager, int steps, const std::function<void()>& attempt) {
    ExhaustionSweep sweep;
    for (int step = 0; step < steps; ++step) {
        const auto before = ProcessSnapshot::take(manager);
        const rlim_t limit = limit_allowing(step);
        try {
            SoftDescriptorLimit lowered(limit);
            attempt();
            ++sweep.succeeded;
        } catch (const Error& e) {
            // A system call's failure keeps its cause: here, always the descriptor limit.
            if (auto* system = dynamic_cast<const SystemError*>(&e)) {
                ++sweep.system_errors;
                if (system->code() != std::errc::too_many_files_open)
                    ADD_FAILURE() << "with RLIMIT_NOFILE " << limit << ", " << system->call()
                                  << " failed with an error code other than EMFILE: " << system->code().message();
            }
            // More descriptors to spare must never make it fail again once it has worked.
            if (sweep.succeeded > 0)
                ADD_FAILURE() << "with RLIMIT_NOFILE " << limit << " it failed again after working with fewer: "
                              << e.what();
            ++sweep.failed;
            sweep.errors.push_back("limit " + std::to_string(limit) + ": " + e.what());
        } catch (const std::exception& e) {
            ADD_FAILURE() << "with RLIMIT_NOFILE " << limit << ", an exception that is not an sdfutures::Error: "
                          << e.what();
        }
        for (const auto& leak : find_leaks(manager, before))
            ADD_FAILURE() << "with RLIMIT_NOFILE " << limit << ": " << leak.message;
    }
    return sweep;
}

}  // namespace sdfutures::testing
