#include "forked_child.hpp"

#include <signal.h>
#include <stdio_ext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace sdfutures::detail {
namespace {

// Runs first among the exit handlers, being registered last: the status is the one exit() was given.
void end_at_exit(int status, void* /*unused*/) {
    std::fflush(nullptr);
    ::_exit(status);
}

}  // namespace

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
    ::__fpurge(stdout);
    ::__fpurge(stderr);
    reset_child_signal();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // NOLINT(concurrency-mt-unsafe): a forked child has one thread
    ::on_exit(end_at_exit, nullptr);
}

}  // namespace sdfutures::detail
