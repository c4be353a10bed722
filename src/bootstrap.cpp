#include "bootstrap.hpp"

#include <unistd.h>

#include <cerrno>
#include <vector>

#include "anchored_unit.hpp"
#include "entry_plan.hpp"
#include "fd_util.hpp"
#include "overlapped_attach.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures::detail {

Release attach_and_release(Manager& manager, const Unit& unit, std::span<const pid_t> children,
                           const std::function<void(std::size_t child, const std::string& release)>& send) {
    Release release;
    const std::vector<uint32_t> to_attach(children.begin(), children.end());
    // The main process is asked for, verified and read while systemd attaches the children. Attaching first is
    // safe: a child does nothing in the unit until its release, and the release is read from the verified process.
    attach_processes_meanwhile(manager, unit.name(), to_attach, [&] {
        release.main_pid = static_cast<pid_t>(verified_main_pid(unit));
        release.message = encode_entry_plan(read_entry_plan(release.main_pid));
    });
    for (std::size_t i = 0; i < children.size(); ++i) send(i, release.message);
    return release;
}

void write_release_pipe(int fd, std::string_view release) {
    std::size_t written = 0;
    while (written < release.size()) {
        ssize_t n = write_without_sigpipe(fd, release.data() + written, release.size() - written);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw SystemError("write", errno, "to release the child");
        written += static_cast<std::size_t>(n);
    }
}

std::optional<std::string> read_release_pipe(int fd) {
    std::optional<std::string> release = read_to_end(fd, kMaxReleaseBytes);
    if (release && release->empty()) return std::nullopt;
    return release;
}

int enter_when_released(const EntryRequest& entry, const std::function<std::optional<std::string>()>& receive_release,
                        const std::function<void(int channel_fd, const std::string& report)>& report_failure) {
    std::optional<std::string> release;
    try {
        release = receive_release();
    } catch (...) {
        ::_exit(127);  // what came was no message of the owner's
    }
    std::optional<EntryPlan> plan = release ? decode_entry_plan(*release) : std::nullopt;
    if (!plan) ::_exit(127);  // the owner gave up before releasing us
    EntryFailure failure;
    if (!enter_unit(entry, *plan, failure)) {
        report_failure(failure.channel_fd, encode_setup_failure(failure.step, failure.error_number, failure.detail));
        ::_exit(125);
    }
    return kEnteredPipeFd;
}

}  // namespace sdfutures::detail
