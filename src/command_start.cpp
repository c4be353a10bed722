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
        auto& state = detail::state_of(bus);
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
        } else if (detail::state_of(bus).remote_host) {
            return;  // the name is one of the other host's users, which this host cannot look up: systemd judges
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

std::string CommandSteps::streams_as_descriptors(const Command& command) {
    auto by_descriptor = [](const Command::StreamSpec& s) {
        return s.kind == Command::Stream::fd || s.kind == Command::Stream::capture || s.kind == Command::Stream::data ||
               s.kind == Command::Stream::inherit || s.kind == Command::Stream::terminal;
    };
    std::string names;
    auto add = [&](const char* name) { names += (names.empty() ? "" : ", ") + std::string(name); };
    if (by_descriptor(command.stdin_)) add("stdin");
    if (by_descriptor(command.stdout_)) add("stdout");
    if (by_descriptor(command.stderr_) || (command.stderr_.kind == Command::Stream::to_stdout && by_descriptor(command.stdout_)))
        add("stderr");
    return names.empty() ? names : names + " as descriptors";
}

void CommandSteps::check_stream_descriptors(const Command& command) {
    for (const auto* s : {&command.stdin_, &command.stdout_, &command.stderr_})
        if (s->kind == Command::Stream::fd && ::fcntl(s->fd, F_GETFD) < 0)
            throw Error("a standard stream of '" + command.argv_.front() + "' was to be descriptor " +
                        std::to_string(s->fd) + ", which is not open (" + errno_text(errno) + ")");
}

}  // namespace detail

namespace {

// What the manager and the cgroup layout must offer: the service type (Type=exec, Type=notify-reload), and whatever the caller's properties need
// (MemoryHigh= on a v1 memory controller would be accepted and do nothing).
// `stream_fds`: the names of the streams passed to systemd as descriptors ("stdout (captured)"), if any.
SystemInfo check_manager_offers(const Bus& bus, const Properties& properties, const std::string& stream_fds) {
    detail::check_identity_properties(bus, properties);
    const SystemInfo info = system_info(bus);
    if (detail::service_type(properties) == "exec") require(Requirement::exec_service_type, info);
    require_properties(properties, info);
    const std::string restart = detail::property_text(properties, "Restart").value_or("no");
    if (restart != "no" && !stream_fds.empty())
        if (auto why = unmet_requirement(Requirement::restart_keeping_stream_fds, info, "Restart=" + restart + " with " + stream_fds))
            throw Unsupported(*why + "; systemd closes the descriptors when the first run ends, so later runs would "
                                     "not write to them: use stdout_to_journal()/stdout_to_null() (and the same for "
                                     "stdin and stderr)");
    return info;
}

}  // namespace

std::unique_ptr<CommandProcess::Impl> detail::CommandSteps::new_process(const Command& command, Bus bus,
                                                                        std::string program) {
    auto impl = std::make_unique<CommandProcess::Impl>(std::move(bus));
    impl->unit = command.unit_name_ ? *command.unit_name_ : detail::default_unit_name("cmd");
    impl->object_path = unit_object_path(impl->unit);
    impl->program = std::move(program);
    impl->properties = command.properties_;
    impl->restart_configured = property_text(command.properties_, "Restart").value_or("no") != "no";
    impl->remain_after_exit = parse::boolean("RemainAfterExit", property_text(command.properties_, "RemainAfterExit").value_or("no"));
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) throw SystemError("eventfd", errno, "to create the Command's wake-up descriptor");
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
        // systemd sends both together; either one missing means reading them again.
        auto active = changed.find("ActiveState");
        auto sub = changed.find("SubState");
        if (active != changed.end() && sub != changed.end()) {
            active_state = active->second.get<std::string>();
            sub_state = sub->second.get<std::string>();
            active_state_stale = false;
            state_was_read = false;
        } else if (active != changed.end() || sub != changed.end() ||
                   std::find(invalidated.begin(), invalidated.end(), "ActiveState") != invalidated.end()) {
            active_state_stale = true;
        }
    } catch (const sdbus::Error&) {
        active_state_stale = true;  // unreadable: ask instead
    }
}

void CommandProcess::Impl::start_unit(const std::vector<DbusProperty>& props) {
    auto& state = detail::state_of(bus);
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

void CommandProcess::Impl::wait_until_started() {
    // Only this thread knows the handle yet: it becomes the server at once.
    become_server(std::nullopt);
    serve(std::nullopt, [&] { return start_job_result.has_value() || finished.load(); });
    if (start_job_result != "done" && !finished) {
        // The unit's end says why: a start failure (thrown here), or a program that ran and failed at once,
        // whose result wait() gives.
        become_server(std::nullopt);
        serve(std::nullopt, [&] { return finished.load(); });
    }
    std::lock_guard lock(control);
    if (failure) std::rethrow_exception(failure);
}

CommandProcess Command::start() const {
    // Everything that can be checked here is, before systemd sees anything.
    const std::optional<std::string> remote_host = bus_ ? detail::state_of(*bus_).remote_host : std::nullopt;
    std::string program = detail::resolve_program(argv_.front(), properties_, remote_host);
    if (remote_host) {
        const std::string streams = detail::CommandSteps::streams_as_descriptors(*this);
        if (!streams.empty())
            detail::state_of(*bus_).refuse_remote(
                "running '" + argv_.front() + "' with " + streams + " (captured, fed, inherited or your own)",
                "send them to the journal or to /dev/null: stdout_to_journal() or stdout_to_null(), the same for "
                "stderr, and stdin_from_null() (the default)");
    }
    detail::CommandSteps::check_stream_descriptors(*this);
    std::vector<DbusProperty> props = detail::CommandSteps::unit_properties(*this, program);
    Bus bus = bus_ ? *bus_ : Bus::automatic();
    const SystemInfo info = check_manager_offers(bus, properties_, detail::CommandSteps::streams_as_descriptors(*this));

    auto impl = detail::CommandSteps::new_process(*this, std::move(bus), std::move(program));
    // The program's ends of the pipes live only in `props` (as sd-bus copies) until the call has been made.
    detail::CommandSteps::connect_streams(*this, props, *impl);
    // Not with a terminal: systemd resets and flushes (TCIOFLUSH) a terminal stdin for every process it spawns,
    // and the ExecStopPost= would throw away the program's last output before this process has read it.
    if (!impl->has_terminal) impl->record_cgroup_usage(info, props);
    impl->start_unit(props);
    // systemd holds its own copies now; ours would keep the pipes from reaching end of file.
    props.clear();
    if (impl->stdin_fd && impl->stdin_data->empty()) impl->stdin_fd.reset();
    impl->wait_until_started();
    return CommandProcess(std::move(impl));
}

}  // namespace sdfutures
