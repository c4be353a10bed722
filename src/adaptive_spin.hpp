#pragma once
// When the pool's dispatcher should poll without sleeping before it sleeps. Plain code, private to the library.
//
// Putting a thread to sleep and waking it costs more than the whole of a trivial task on this kind of machine: a
// sleeping vCPU halts, and waking it is an inter-processor interrupt through the hypervisor (a median cross-CPU
// round trip of 4.8 µs, a mean of 65 µs, docs/benchmarks.md). A dispatcher that polls for a short while before it
// sleeps finds a worker's answer, or the caller's next submit, without being woken. It pays only where events
// come that fast: it spins when the recent waits were shorter than its budget, and a wait that outlasts the budget
// ends in the ordinary sleep, so a pool whose tasks take milliseconds never spins and an idle pool spins once.

#include <chrono>

namespace sdfutures::detail {

class AdaptiveSpin {
public:
    using Duration = std::chrono::nanoseconds;

    // `budget`: the longest a single spin lasts; zero never spins.
    explicit AdaptiveSpin(Duration budget) : budget_(budget) {}

    Duration budget() const { return budget_; }

    // Whether the next wait should begin with a spin: the recent waits were, on the whole, shorter than the budget.
    bool worth_it() const { return budget_.count() > 0 && typical_wait_ < budget_; }

    // How long the last wait took, from its start to its first event (or its deadline), spun or slept.
    void observe(Duration waited) {
        // An exponential average, each wait a quarter of it: a few short waits make spinning pay again after an
        // idle spell, a few long ones stop it. Capped, so that one long idle spell counts no more than a few.
        const Duration capped = waited < kCap ? waited : kCap;
        typical_wait_ += (capped - typical_wait_) / 4;
    }

private:
    static constexpr Duration kCap = std::chrono::milliseconds(1);
    Duration budget_;
    Duration typical_wait_{0};  // starts at zero: a new pool's first waits spin
};

}  // namespace sdfutures::detail
