#pragma once
// AttachProcessesToUnit with work of the caller's in its shadow: the call goes out, `meanwhile` runs while systemd
// moves the processes, then the reply is awaited. Saves what `meanwhile` costs from the owner's path to a pool
// or process being ready (the entry plan's read, bootstrap.hpp's step 3). Private to the library.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sdfutures {
class Manager;
}  // namespace sdfutures

namespace sdfutures::detail {

// `meanwhile` runs without the bus's mutex, so it may make calls of its own on the bus. Throws what `meanwhile`
// throws (the call's reply is then not delivered), else SystemdError when the attach failed, as
// Manager::attach_processes_to_unit does.
void attach_processes_meanwhile(Manager& manager, const std::string& unit, const std::vector<uint32_t>& pids,
                                const std::function<void()>& meanwhile);

}  // namespace sdfutures::detail
