// An owner process for the lifetime tests: starts work in transient units, prints where it runs, then waits
// to be killed. The test SIGKILLs it and checks that nothing it started survives.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <thread>

#include "sdfutures/sdfutures.hpp"

#if defined(__SANITIZE_THREAD__)
#define OWNER_HELPER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define OWNER_HELPER_TSAN 1
#endif
#endif

int main(int argc, char** argv) {
#ifdef OWNER_HELPER_TSAN
    // ThreadSanitizer gives a child forked from a single-threaded process a background thread, and a process of
    // two threads cannot join the unit's mount namespace; a child of a multi-threaded process gets none. Before
    // init(), so that the zygote it forks is such a child too (an exec'd server copes with a second thread).
    std::thread([] {
        for (;;) pause();
    }).detach();
#endif
    sdfutures::init(argc, argv);  // first: a "pool-exec" owner's server is this program, executed by systemd
    std::string kind = argc > 1 ? argv[1] : "process";
    if (kind == "process") {
        sdfutures::TransientUnitProcess p({{"User", "nobody"}}, [] {
            for (;;) pause();
            return 0;
        });
        p.start();
        std::cout << p.unit().name() << " " << p.pid() << std::endl;
        for (;;) pause();
    }
    if (kind.starts_with("pool")) {
        auto method = kind == "pool-exec"         ? sdfutures::StartMethod::exec
                      : kind == "pool-forkserver" ? sdfutures::StartMethod::forkserver
                                                  : sdfutures::StartMethod::fork;
        sdfutures::TransientUnitPoolExecutor pool({{"User", "nobody"}}, {.max_workers = 2, .start_method = method});
        auto busy = pool.submit(+[] {
            for (;;) pause();
        });
        std::cout << pool.unit().name();
        for (pid_t pid : pool.worker_pids()) std::cout << " " << pid;
        std::cout << std::endl;
        for (;;) pause();
    }
    std::cerr << "unknown kind " << kind << "\n";
    return 2;
}
