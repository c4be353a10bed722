#include "bootstrap.hpp"

#include <unistd.h>

#include <cstring>
#include <vector>

#include "anchored_unit.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures::detail {

std::string release_message(pid_t main_pid) { return {reinterpret_cast<const char*>(&main_pid), sizeof main_pid}; }

std::optional<pid_t> parse_release_message(std::string_view body) {
    pid_t main_pid = 0;
    if (body.size() != sizeof main_pid) return std::nullopt;
    std::memcpy(&main_pid, body.data(), sizeof main_pid);
    if (main_pid <= 0) return std::nullopt;
    return main_pid;
}

pid_t attach_and_release(Manager& manager, const Unit& unit, std::span<const pid_t> children,
                         const std::function<void(std::size_t child, const std::string& release)>& send) {
    const auto main_pid = static_cast<pid_t>(verified_main_pid(unit));
    std::vector<uint32_t> to_attach(children.begin(), children.end());
    manager.attach_processes_to_unit(unit.name(), "/", to_attach);
    const std::string release = release_message(main_pid);
    for (std::size_t i = 0; i < children.size(); ++i) send(i, release);
    return main_pid;
}

int enter_when_released(const EntryRequest& entry, const std::function<std::optional<std::string>()>& receive_release,
                        const std::function<void(int channel_fd, const std::string& report)>& report_failure) {
    std::optional<std::string> release;
    try {
        release = receive_release();
    } catch (...) {
        ::_exit(127);  // what came was no message of the owner's
    }
    std::optional<pid_t> main_pid = release ? parse_release_message(*release) : std::nullopt;
    if (!main_pid) ::_exit(127);  // the owner gave up before releasing us
    EntryRequest request = entry;
    request.main_pid = *main_pid;
    EntryFailure failure;
    if (!enter_unit(request, failure)) {
        report_failure(failure.channel_fd, encode_setup_failure(failure.step, failure.error_number, failure.detail));
        ::_exit(125);
    }
    return kEnteredPipeFd;
}

}  // namespace sdfutures::detail
