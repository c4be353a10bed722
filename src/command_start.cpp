// Command: the start. Every check that can be made before systemd is asked, then StartTransientUnit with the
// unit's signals matched first.
#include <fcntl.h>
#include <pwd.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <map>

#include "anchored_unit.hpp"
#include "command_impl.hpp"
#include "sdfutures/system_info.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures {

using detail::kManagerInterface;
using detail::kPropertiesInterface;
using detail::kSystemdService;
using detail::kUnitInterface;

namespace detail {

void check_identity_properties(const Bus& bus, const Properties& properties) {
    std::optional<std::string> user;
    bool dynamic = false;
    for (auto& e : properties.entries()) {
        try {
            if (e.name == "User") user = e.typed ? e.typed->get<std::string>() : e.text;
            if (e.name == "DynamicUser") dynamic = e.typed ? e.typed->get<bool>() : parse::boolean(e.name, e.text);
        } catch (const sdbus::Error&) {
            // A mistyped typed value: systemd's own check at start says so.
        }
    }
    if (!user && !dynamic) return;
    uint32_t manager_uid = 0;
    {
        auto& state = bus.state();
        std::lock_guard lock(state.mutex);
        state.check_owner();
        try {
            auto proxy = sdbus::createProxy(*state.connection, "org.freedesktop.DBus", "/org/freedesktop/DBus");
            proxy->callMethod("GetConnectionUnixUser").onInterface("org.freedesktop.DBus")
                .withArguments(std::string(kSystemdService)).storeResultsTo(manager_uid);
        } catch (const sdbus::Error&) {
            return;  // no bus daemon to ask (a direct connection): leave the verdict to systemd
        }
    }
    if (manager_uid == 0) return;
    std::string where = "the manager on " + bus.description() + " runs as uid " + std::to_string(manager_uid);
    if (dynamic)
        throw Unsupported("DynamicUser=yes needs a manager running as root, but " + where +
                          " and cannot allocate users; use Bus::system() (as root or with polkit's permission)");
    if (user) {
        std::optional<uint32_t> uid;
        uint32_t n = 0;
        auto [end, ec] = std::from_chars(user->data(), user->data() + user->size(), n);
        if (ec == std::errc() && end == user->data() + user->size()) {
            uid = n;
        } else {
            passwd pw{}, *found = nullptr;
            std::vector<char> buf(16384);
            if (getpwnam_r(user->c_str(), &pw, buf.data(), buf.size(), &found) == 0 && found) uid = found->pw_uid;
        }
        if (!uid || *uid != manager_uid)
            throw Unsupported("User=" + *user + " needs a manager running as root, but " + where +
                              " and cannot switch to another user; use Bus::system()");
    }
}

void CommandSteps::check_stream_descriptors(const Command& command) {
    for (const auto* s : {&command.stdin_, &command.stdout_, &command.stderr_})
        if (s->kind == Command::Stream::fd && ::fcntl(s->fd, F_GETFD) < 0)
            throw Error("a standard stream of '" + command.argv_.front() + "' was to be descriptor " +
                        std::to_string(s->fd) + ", which is not open (" + errno_text(errno) + ")");
}

}  // namespace detail

namespace {

// What the manager and the cgroup layout must offer: Type=exec, and whatever the caller's properties need
// (MemoryHigh= on a v1 memory controller would be accepted and do nothing).
void check_manager_offers(const Bus& bus, const Properties& properties) {
    detail::check_identity_properties(bus, properties);
    const SystemInfo info = system_info(bus);
    require(Requirement::exec_service_type, info);
    require_properties(properties, info);
}

}  // namespace

std::unique_ptr<CommandProcess::Impl> detail::CommandSteps::new_process(const Command& command, Bus bus,
                                                                        std::string program) {
    auto impl = std::make_unique<CommandProcess::Impl>(std::move(bus));
    impl->unit = command.unit_name_ ? *command.unit_name_ : detail::default_unit_name("cmd");
    impl->object_path = unit_object_path(impl->unit);
    impl->program = std::move(program);
    impl->properties = command.properties_;
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) throw Error("cannot create an eventfd: " + errno_text(errno));
    impl->wake = detail::OwnedFd(wake);
    return impl;
}

void CommandProcess::Impl::on_properties_changed(sdbus::Message& msg) {
    try {
        std::string interface;
        std::map<std::string, sdbus::Variant> changed;
        std::vector<std::string> invalidated;
        msg >> interface >> changed >> invalidated;
        if (interface != kUnitInterface) return;
        if (auto it = changed.find("ActiveState"); it != changed.end()) {
            active_state = it->second.get<std::string>();
            active_state_stale = false;
        } else if (std::find(invalidated.begin(), invalidated.end(), "ActiveState") != invalidated.end()) {
            active_state_stale = true;
        }
    } catch (const sdbus::Error&) {
        active_state_stale = true;  // unreadable: ask instead
    }
}

void CommandProcess::Impl::start_unit(const std::vector<DbusProperty>& props) {
    auto& state = bus.state();
    std::lock_guard lock(state.mutex);
    state.check_owner();
    Impl* raw = this;
    try {
        unit_proxy = sdbus::createProxy(*state.connection, kSystemdService, object_path);
        // Installed (synchronously, at the bus daemon) before the unit exists, so no state change of it can
        // be missed.
        properties_match = state.connection->addMatch(
            "type='signal',sender='" + std::string(kSystemdService) + "',path='" + object_path +
                "',interface='" + kPropertiesInterface + "',member='PropertiesChanged',arg0='" + kUnitInterface + "'",
            [raw](sdbus::Message& msg) { raw->on_properties_changed(msg); });
        using Aux = std::vector<sdbus::Struct<std::string, std::vector<DbusProperty>>>;
        sdbus::ObjectPath job = detail::translate_errors("StartTransientUnit " + unit, [&] {
            sdbus::ObjectPath p;
            state.manager->callMethod("StartTransientUnit").onInterface(kManagerInterface)
                .withArguments(unit, std::string("fail"), props, Aux{}).storeResultsTo(p);
            return p;
        });
        // Signals that arrived during the call are queued, not dispatched yet: the job's end is not missed.
        state.awaited_jobs.emplace(job, std::nullopt);
        start_job = job;
        started = true;
    } catch (...) {
        properties_match.reset();
        unit_proxy.reset();
        throw;
    }
}

CommandProcess Command::start() const {
    // Everything that can be checked here is, before systemd sees anything.
    std::string program = detail::resolve_program(argv_.front(), properties_);
    detail::CommandSteps::check_stream_descriptors(*this);
    std::vector<DbusProperty> props = detail::CommandSteps::unit_properties(*this, program);
    Bus bus = bus_ ? *bus_ : Bus::automatic();
    check_manager_offers(bus, properties_);

    auto impl = detail::CommandSteps::new_process(*this, std::move(bus), std::move(program));
    // The program's ends of the pipes live only in `props` (as sd-bus copies) until the call has been made.
    detail::CommandSteps::connect_streams(*this, props, *impl);
    impl->start_unit(props);
    // systemd holds its own copies now; ours would keep the pipes from reaching end of file.
    props.clear();
    if (impl->stdin_fd && impl->stdin_data->empty()) impl->stdin_fd.reset();
    return CommandProcess(std::move(impl));
}

}  // namespace sdfutures
