// Command: the builder. Its setters check what can be checked at once; unit_properties() assembles what the
// unit is started with.
#include "sdfutures/command.hpp"

#include <array>
#include <functional>
#include <map>
#include <set>

#include "command_impl.hpp"
#include "property_catalog.hpp"

namespace sdfutures {

namespace {

std::string join_argv(const std::vector<std::string>& argv) {
    std::string out;
    for (auto& a : argv) {
        if (!out.empty()) out += ' ';
        out += a;
        if (out.size() > 200) return out.substr(0, 200) + "...";
    }
    return out;
}

// The service types whose main process is the program Command started, so that its end is the command's.
// forking and dbus are not: the first makes a daemon's child the main process, the second waits for a bus name.
void check_service_type(const std::string& type) {
    static const std::set<std::string, std::less<>> supported = {"simple", "exec", "notify", "notify-reload", "oneshot"};
    if (!supported.contains(type))
        throw UnsupportedProperty("Type", "a Command runs Type=simple, exec, notify, notify-reload or oneshot, not '" +
                                              type + "' (its main process must be the program it started)");
}

// `value`: the unit-file text, or a typed value's string; nullopt for a typed value of another type, which
// systemd checks at start.
void check_settable(const std::string& name, const std::optional<std::string>& value) {
    const detail::PropertyRow* row = detail::find_property(name);
    if (row && !row->reserved_by_command.empty()) throw UnsupportedProperty(name, std::string(row->reserved_by_command));
    if (name == "Type" && value) check_service_type(*value);
}

std::optional<std::string> text_of_typed(const sdbus::Variant& value) {
    if (value.containsValueOfType<std::string>()) return value.get<std::string>();
    return std::nullopt;
}

bool valid_env_name(const std::string& name) {
    if (name.empty() || (name.front() >= '0' && name.front() <= '9')) return false;
    for (char c : name)
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    return true;
}

}  // namespace

Command::Command(std::vector<std::string> argv) : argv_(std::move(argv)) {
    if (argv_.empty()) throw ProgramNotFound("", "the argument vector is empty");
}

Command& Command::property(std::string name, std::string value) {
    check_settable(name, value);
    properties_.set(std::move(name), std::move(value));
    return *this;
}

Command& Command::typed_property(std::string name, sdbus::Variant value) {
    check_settable(name, text_of_typed(value));
    properties_.set_typed(std::move(name), std::move(value));
    return *this;
}

Command& Command::properties(const Properties& properties) {
    for (auto& e : properties.entries()) check_settable(e.name, e.typed ? text_of_typed(*e.typed) : e.text);
    for (auto& e : properties.entries()) {
        if (e.typed) properties_.set_typed(e.name, *e.typed);
        else properties_.set(e.name, e.text);
    }
    return *this;
}

Command& Command::environment(const std::string& name, const std::string& value) {
    if (!valid_env_name(name))
        throw PropertyError("Environment", name + "=" + value, "a variable name of letters, digits and '_'");
    environment_.push_back(name + "=" + value);
    return *this;
}

Command& Command::working_directory(std::string path) {
    properties_.set("WorkingDirectory", std::move(path));
    return *this;
}

Command& Command::unit_name(std::string name) {
    if (name.size() <= 8 || !name.ends_with(".service"))
        throw Error("unit name '" + name + "' must end in \".service\": a Command runs as a service");
    unit_name_ = std::move(name);
    return *this;
}

Command& Command::bus(Bus bus) {
    bus_ = std::move(bus);
    return *this;
}

// ---------------------------------------------------------------------------------------------------------
// The streams

namespace {

constexpr std::array<const char*, 3> kStreamProperty = {"StandardInput", "StandardOutput", "StandardError"};
constexpr const char* kPtyStreams = "pty(), which makes stdin, stdout and stderr a terminal";

}  // namespace

Command& Command::set_stream(Which which, StreamSpec spec, const char* setter) {
    if (stdin_.kind == Stream::terminal)
        throw UnsupportedProperty(kStreamProperty.at(which), std::string(setter) + " cannot be combined with " + kPtyStreams);
    StreamSpec& stream = which == in ? stdin_ : which == out ? stdout_ : stderr_;
    stream = spec;
    setter_.at(which) = setter;
    return *this;
}

Command& Command::stdin_from(std::string data) {
    set_stream(in, {Stream::data}, "stdin_from()");
    stdin_data_ = std::make_shared<const std::string>(std::move(data));
    return *this;
}
Command& Command::stdin_from_fd(int fd) { return set_stream(in, {Stream::fd, fd}, "stdin_from_fd()"); }
Command& Command::stdin_from_null() { return set_stream(in, {Stream::null}, "stdin_from_null()"); }
Command& Command::inherit_stdin() { return set_stream(in, {Stream::inherit}, "inherit_stdin()"); }

Command& Command::capture_stdout(std::optional<std::size_t> max_bytes) {
    return set_stream(out, {Stream::capture, -1, max_bytes}, "capture_stdout()");
}
Command& Command::stdout_to_fd(int fd) { return set_stream(out, {Stream::fd, fd}, "stdout_to_fd()"); }
Command& Command::stdout_to_null() { return set_stream(out, {Stream::null}, "stdout_to_null()"); }
Command& Command::stdout_to_journal() { return set_stream(out, {Stream::journal}, "stdout_to_journal()"); }
Command& Command::inherit_stdout() { return set_stream(out, {Stream::inherit}, "inherit_stdout()"); }

Command& Command::capture_stderr(std::optional<std::size_t> max_bytes) {
    return set_stream(err, {Stream::capture, -1, max_bytes}, "capture_stderr()");
}
Command& Command::stderr_to_fd(int fd) { return set_stream(err, {Stream::fd, fd}, "stderr_to_fd()"); }
Command& Command::stderr_to_null() { return set_stream(err, {Stream::null}, "stderr_to_null()"); }
Command& Command::stderr_to_journal() { return set_stream(err, {Stream::journal}, "stderr_to_journal()"); }
Command& Command::inherit_stderr() { return set_stream(err, {Stream::inherit}, "inherit_stderr()"); }
Command& Command::stderr_to_stdout() { return set_stream(err, {Stream::to_stdout}, "stderr_to_stdout()"); }

Command& Command::pty(PtyOptions size) {
    for (Which which : {in, out, err})
        if (const char* setter = setter_.at(which); setter && stdin_.kind != Stream::terminal)
            throw UnsupportedProperty(kStreamProperty.at(which),
                                      std::string(kPtyStreams) + ", cannot be combined with " + setter + ", given before");
    stdin_ = stdout_ = stderr_ = StreamSpec{Stream::terminal};
    stdin_data_.reset();
    pty_size_ = size;
    return *this;
}

// ---------------------------------------------------------------------------------------------------------
// The unit's properties

std::string detail::service_type(const Properties& properties) {
    return property_text(properties, "Type").value_or("exec");
}

std::optional<std::string> detail::property_text(const Properties& properties, std::string_view name) {
    std::optional<std::string> text;
    for (const auto& e : properties.entries()) {
        if (e.name != name) continue;
        if (!e.typed) text = e.text;
        else if (e.typed->containsValueOfType<bool>()) text = e.typed->get<bool>() ? "yes" : "no";
        else text = text_of_typed(*e.typed);
    }
    return text;
}

std::vector<DbusProperty> detail::CommandSteps::unit_properties(const Command& command, const std::string& program) {
    const Properties& own_properties = command.properties_;
    std::vector<DbusProperty> props;
    auto add = [&](const char* name, sdbus::Variant value) { props.emplace_back(name, std::move(value)); };
    // Defaults first, so that the caller's own assignments of the same names win.
    if (!own_properties.contains("Description"))
        add("Description", sdbus::Variant("sdfutures command: " + join_argv(command.argv_)));
    if (!own_properties.contains("CPUAccounting")) add("CPUAccounting", sdbus::Variant(true));
    if (!own_properties.contains("MemoryAccounting")) add("MemoryAccounting", sdbus::Variant(true));
    // On a v1 layout systemd gives the unit a blkio cgroup of its own for this (BlockIOAccounting= too).
    if (!own_properties.contains("IOAccounting") && !own_properties.contains("BlockIOAccounting"))
        add("IOAccounting", sdbus::Variant(true));
    auto own = own_properties.to_dbus();  // throws PropertyError
    props.insert(props.end(), std::make_move_iterator(own.begin()), std::make_move_iterator(own.end()));
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    add("ExecStart", sdbus::Variant(std::vector<Exec>{Exec{program, escape_for_exec(command.argv_), false}}));
    // exec unless told otherwise: the start job ends only once execve() succeeded, so a program systemd cannot
    // run fails the start.
    if (!own_properties.contains("Type")) add("Type", sdbus::Variant(std::string("exec")));
    add("AddRef", sdbus::Variant(true));
    add("CollectMode", sdbus::Variant(std::string("inactive-or-failed")));
    if (!command.environment_.empty()) add("Environment", sdbus::Variant(command.environment_));
    return props;
}

CommandResult Command::run(std::optional<std::chrono::milliseconds> timeout) const {
    CommandProcess process = start();
    if (!timeout) return process.wait();
    if (auto r = process.wait_for(*timeout)) return std::move(*r);
    auto request = std::make_shared<CommandProcess::Impl::Request>();
    request->kind = CommandProcess::Impl::Request::stop;
    request->because_of_timeout = true;
    process.impl().request(std::move(request));
    return process.wait();
}

}  // namespace sdfutures
