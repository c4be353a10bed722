#include "forked_child.hpp"

#include <signal.h>
#include <stdio_ext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "heartbeat_page.hpp"

namespace sdfutures::detail {
namespace {

// Set only in children the library forked; read by the exit handler in whatever process runs exit().
volatile sig_atomic_t library_child = 0;

// Runs among the exit handlers (before those registered earlier): the status is the one exit() was given.
void end_library_child_at_exit(int status, void* /*unused*/) {
    if (!library_child) return;  // the owner, or a child the program forked itself: exit() as usual
    std::fflush(nullptr);
    ::_exit(status);
}

}  // namespace

void prepare_exit_guard() {
    static std::once_flag registered;
    std::call_once(registered, [] { ::on_exit(end_library_child_at_exit, nullptr); });
}

void reset_child_signal() noexcept {
    struct sigaction action {};
    action.sa_handler = SIG_DFL;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGCHLD, &action, nullptr);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_UNBLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe): a forked child has one thread
}

void detach_from_owner_state() noexcept {
    library_child = 1;
    // A child of a worker (a TransientUnitProcess run from a task) is no worker: its heartbeat() must not keep
    // the parent's task alive. worker_main adopts its own page after this.
    forget_heartbeat_page();
    ::__fpurge(stdout);
    ::__fpurge(stderr);
    reset_child_signal();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // NOLINT(concurrency-mt-unsafe): a forked child has one thread
}

}  // namespace sdfutures::detail
