#include "overlapped_attach.hpp"

#include <sdbus-c++/sdbus-c++.h>

#include <exception>
#include <mutex>
#include <optional>

#include "bus_state.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures::detail {

void attach_processes_meanwhile(Manager& manager, const std::string& unit, const std::vector<uint32_t>& pids,
                                const std::function<void()>& meanwhile) {
    auto& state = state_of(manager.bus());
    std::unique_lock lock(state.mutex);
    state.check_owner();
    const std::string what = "AttachProcessesToUnit " + unit;
    // Set once the reply (or sd-bus's timeout of the call) is dispatched, by whichever thread dispatches it, under
    // the bus mutex: nullptr for success.
    std::optional<std::exception_ptr> outcome;
    sdbus::PendingAsyncCall call = translate_errors(what, [&] {
        return state.manager->callMethodAsync("AttachProcessesToUnit")
            .onInterface(kManagerInterface)
            .withArguments(unit, std::string("/"), pids)
            .uponReplyInvoke([&outcome, &what](const sdbus::Error* error) {
                outcome = error == nullptr ? nullptr
                                           : std::make_exception_ptr(SystemdError(what, error->getName(), error->getMessage()));
            });
    });
    // Without the mutex: `meanwhile` may use the bus itself (MainPID is a Get).
    lock.unlock();
    try {
        meanwhile();
        lock.lock();
        // No deadline of ours: sd-bus ends the call with a timeout error of its own, which the handler records.
        state.dispatch_until([&] { return outcome.has_value(); }, std::nullopt);
    } catch (...) {
        if (!lock.owns_lock()) lock.lock();
        call.cancel();  // the handler refers to this frame
        throw;
    }
    if (*outcome) std::rethrow_exception(*outcome);
}

}  // namespace sdfutures::detail
