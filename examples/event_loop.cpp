// An event loop that never blocks on a future: it polls a CompletionEvents descriptor beside its own input
// (here: stdin, line by line), handles each task as it is done, and streams a lazy imap() over an endless
// range until it has seen enough.
//
//     sudo scripts/with-systemd build/examples/event_loop
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <ranges>
#include <string>
#include <thread>

#include "sdfutures/sdfutures.hpp"

namespace {

long collatz_steps(long n) {
    long steps = 0;
    for (; n != 1; ++steps) n = n % 2 ? 3 * n + 1 : n / 2;
    return steps;
}

long slow_square(long x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100 * x));
    return x * x;
}

}  // namespace

int main(int argc, char** argv) {
    sdfutures::init(argc, argv);
    sdfutures::TransientUnitPoolExecutor pool({{"CPUQuota", "50%"}}, {.max_workers = 2});

    // 1. Tasks handled as they finish, from a poll() loop that also watches stdin.
    sdfutures::CompletionEvents events;
    std::map<std::size_t, sdfutures::Task<long>> tasks;
    for (long x : {5, 1, 3, 2, 4}) {
        auto task = pool.schedule(&slow_square, x);
        const std::size_t key = events.watch(task);
        tasks.emplace(key, std::move(task));
    }
    bool stdin_open = true;
    while (!tasks.empty()) {
        pollfd fds[2] = {{events.fd(), POLLIN, 0}, {stdin_open ? STDIN_FILENO : -1, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) return 1;
        if (fds[1].revents & (POLLIN | POLLHUP)) {
            char line[256];
            const ssize_t n = ::read(STDIN_FILENO, line, sizeof line);
            if (n > 0) std::printf("(the loop stayed responsive: read %zd bytes of stdin)\n", n);
            if (n <= 0) stdin_open = false;
        }
        if (!(fds[0].revents & POLLIN)) continue;
        for (std::size_t key : events.take()) {
            auto node = tasks.extract(key);
            std::printf("task %zu done: %ld\n", key, node.mapped().future().get());
        }
    }

    // 2. A lazy map over an endless range, in chunks: stop when a number needs more than 400 steps.
    auto steps = pool.imap(&collatz_steps, std::views::iota(1L), {.chunksize = 10'000});
    for (auto it = steps.begin(); it != std::default_sentinel; ++it) {
        if (*it > 400) {
            std::printf("%zu needs %ld Collatz steps\n", it.index() + 1, *it);
            break;  // what was sent and not yet yielded is cancelled
        }
    }
}
