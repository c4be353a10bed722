#include "sdfutures/bus.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "bus_state.hpp"
#include "sys.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures {
namespace detail {

void throw_systemd_error(const std::string& call, const sdbus::Error& e) {
    throw SystemdError(call, e.getName(), e.getMessage());
}

sdbus::Variant fd_variant(int fd, const std::string& what) {
    auto refused = [&](const std::string& why) {
        return Error(what + ": descriptor " + std::to_string(fd) + " cannot be passed to systemd (" + why + ")");
    };
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) throw refused(errno_text(errno));
    try {
        return sdbus::Variant(sdbus::UnixFd(copy, sdbus::adopt_fd));
    } catch (const sdbus::Error& e) {  // sd-bus's own copy of it failed (EMFILE, most likely)
        throw refused(e.getMessage());
    }
}

void BusState::check_owner() const {
    if (getpid() != owner_pid)
        throw StateError("the D-Bus connection to " + description +
                         " belongs to the process that opened it and cannot be used after fork()");
}

bool BusState::dispatch_until(const std::function<bool()>& done, Deadline deadline) {
    check_owner();
    for (;;) {
        while (connection->processPendingRequest()) {
            if (done()) return true;
        }
        if (done()) return true;
        if (!poll_with({}, deadline)) return false;
    }
}

bool BusState::poll_with(std::span<pollfd> fds, Deadline deadline) {
    auto poll_data = connection->getEventLoopPollData();
    int timeout_ms = -1;
    if (deadline) {
        auto now = std::chrono::steady_clock::now();
        if (now >= *deadline) return false;
        timeout_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(*deadline - now).count());
    }
    if (poll_data.timeout_usec != UINT64_MAX) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now_usec = uint64_t(ts.tv_sec) * 1'000'000 + uint64_t(ts.tv_nsec) / 1000;
        int bus_ms = poll_data.timeout_usec <= now_usec ? 0 : int((poll_data.timeout_usec - now_usec + 999) / 1000);
        timeout_ms = timeout_ms < 0 ? bus_ms : std::min(timeout_ms, bus_ms);
    }
    std::vector<pollfd> all;
    all.reserve(fds.size() + 1);
    all.push_back(pollfd{poll_data.fd, poll_data.events, 0});
    for (auto& p : fds) all.push_back(pollfd{p.fd, p.events, 0});
    int r = detail::sys::poll(all.data(), all.size(), timeout_ms);
    if (r < 0 && errno != EINTR) throw BusError(description, "poll failed: " + errno_text(errno));
    for (size_t i = 0; i < fds.size(); ++i) fds[i].revents = r > 0 ? all[i + 1].revents : short{0};
    if (r > 0 && (all[0].revents & (POLLHUP | POLLERR)) && !(all[0].revents & POLLIN))
        throw BusError(description, "the connection was closed");
    return true;
}

void BusState::refuse_remote(const std::string& what, const std::string& instead) const {
    if (!remote_host) return;
    throw Unsupported(what + " cannot be done through " + description +
                      ": ssh carries D-Bus messages but neither file descriptors nor this host's processes" +
                      (instead.empty() ? "" : "; " + instead));
}

RemovalWatch::RemovalWatch(BusState& state, const std::string& unit) : state_(state) {
    auto emplaced = state.awaited_removals.emplace(unit, false);
    it_ = emplaced.first;
    owned_ = emplaced.second;
}

RemovalWatch::~RemovalWatch() {
    if (owned_) state_.awaited_removals.erase(it_);
}

}  // namespace detail

namespace {

// How a connection is made and how its failures read.
struct Connecting {
    std::string description;                  // BusState::description
    std::string error_address;                // BusError::address()
    std::optional<std::string> remote_host;   // BusState::remote_host
    std::function<std::unique_ptr<sdbus::IConnection>()> open;
    // What a failure means, in the caller's words, given sd-bus's: opening failed, or the connection was
    // opened and no manager answered on it.
    std::function<std::string(bool opened, const std::string& sdbus_error)> explain;
};

std::shared_ptr<detail::BusState> connect(const Connecting& how) {
    auto state = std::make_shared<detail::BusState>();
    state->description = how.description;
    state->remote_host = how.remote_host;
    state->owner_pid = getpid();
    try {
        state->connection = how.open();
    } catch (const sdbus::Error& e) {
        throw BusError(how.error_address, how.explain(false, e.getMessage().empty() ? e.getName() : e.getMessage()));
    }
    detail::BusState* raw = state.get();
    try {
        state->manager = sdbus::createProxy(*state->connection, detail::kSystemdService, detail::kManagerPath);
        state->manager->uponSignal("JobRemoved")
            .onInterface(detail::kManagerInterface)
            .call([raw](uint32_t, const sdbus::ObjectPath& job, const std::string&, const std::string& result) {
                auto it = raw->awaited_jobs.find(job);
                if (it != raw->awaited_jobs.end()) it->second = result;
            });
        state->manager->uponSignal("UnitRemoved")
            .onInterface(detail::kManagerInterface)
            .call([raw](const std::string& unit, const sdbus::ObjectPath&) {
                auto it = raw->awaited_removals.find(unit);
                if (it != raw->awaited_removals.end()) it->second = true;
            });
        state->manager->finishRegistration();
        // Without a subscriber the manager does not broadcast UnitRemoved; the subscription ends with
        // the connection.
        state->manager->callMethod("Subscribe").onInterface(detail::kManagerInterface);
    } catch (const sdbus::Error& e) {
        throw BusError(how.error_address, how.explain(true, e.getName() + ": " + e.getMessage()));
    }
    return state;
}

Connecting local(const std::string& description, std::function<std::unique_ptr<sdbus::IConnection>()> open) {
    return Connecting{description, description, std::nullopt, std::move(open), [](bool opened, const std::string& why) {
                          return opened ? "no systemd manager answers there: " + why : why;
                      }};
}

// D-Bus address escaping: every byte but [-0-9A-Za-z_/.\*] as %XX.
std::string address_escape(std::string_view value) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        auto byte = static_cast<unsigned char>(c);
        bool plain = (byte >= '0' && byte <= '9') || (byte >= 'a' && byte <= 'z') || (byte >= 'A' && byte <= 'Z') ||
                     std::string_view("-_/.\\*").find(c) != std::string_view::npos;
        if (plain) {
            out += c;
        } else {
            out += '%';
            out += kHex[byte >> 4U];
            out += kHex[byte & 0xfU];
        }
    }
    return out;
}

// For the other host's login shell, which runs ssh's command line (ssh joins its words with spaces): a word
// of other characters than the harmless ones, single-quoted as POSIX shells take it.
std::string shell_word(const std::string& word) {
    bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               std::string_view("-_/.:=,@%+").find(c) != std::string_view::npos;
    });
    if (plain) return word;
    std::string quoted = "'";
    for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

// "[user@]name[:port]", "[user@][v6 address][:port]": the destination ssh is given and the port, as
// sd_bus_open_system_remote splits them (its "host/container" form is not taken: there is no container here).
struct SshDestination {
    std::string destination;  // "user@name" or "name"
    std::string port;         // empty: ssh's default
};

SshDestination parse_host(const std::string& host) {
    auto bad = [&](const std::string& why) { return BusError(host, "not a host for ssh: " + why); };
    if (host.empty()) throw bad("the name is empty");
    if (host.front() == '-') throw bad("it starts with '-'");
    for (char c : host)
        if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) throw bad("it holds a space or control character");
    std::string user;
    std::string_view rest(host);
    if (auto at = rest.find('@'); at != std::string_view::npos) {
        user = std::string(rest.substr(0, at + 1));
        rest.remove_prefix(at + 1);
        if (user.size() == 1) throw bad("the user before '@' is empty");
        if (rest.find('@') != std::string_view::npos) throw bad("it holds more than one '@'");
    }
    std::string name;
    if (!rest.empty() && rest.front() == '[') {
        auto close = rest.find(']');
        if (close == std::string_view::npos) throw bad("'[' without ']'");
        name = std::string(rest.substr(1, close - 1));
        rest.remove_prefix(close + 1);
        if (!rest.empty() && rest.front() != ':') throw bad("only ':port' may follow ']'");
    } else {
        auto colon = rest.find(':');
        name = std::string(rest.substr(0, colon));
        rest.remove_prefix(colon == std::string_view::npos ? rest.size() : colon);
    }
    if (name.empty()) throw bad("the host name is empty");
    if (name.find('/') != std::string::npos) throw bad("'/' in the host name (containers on the host are not reached this way)");
    std::string port;
    if (!rest.empty()) {  // ":port"
        port = std::string(rest.substr(1));
        bool digits = !port.empty() && port.size() <= 5 &&
                      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (!digits || std::stoi(port) < 1 || std::stoi(port) > 65535)
            throw bad("the port '" + port + "' is not a number from 1 to 65535");
    }
    return {user + name, port};
}

// Where `program` is executed from (execvp's search, as sd-bus's exec does), or an empty string.
std::string find_program(const std::string& program) {
    auto executable = [](const std::string& path) {
        struct stat st{};
        return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
    };
    if (program.find('/') != std::string::npos) return executable(program) ? program : std::string();
    // getenv races only with setenv/putenv, which sdfutures calls in forked children alone.
    const char* env = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe)
    std::istringstream dirs(env && *env ? env : "/usr/local/bin:/usr/bin:/bin");
    for (std::string dir; std::getline(dirs, dir, ':');) {
        std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
        if (executable(candidate)) return candidate;
    }
    return {};
}

// ssh's own messages (ssh -E), read back when the connection fails: they say why (refused, no route, the host
// key, the login). The file is removed once the connection is up or has failed; a running ssh keeps writing
// into the removed file.
class SshLog {
public:
    SshLog() {
        const char* tmp = std::getenv("TMPDIR");  // NOLINT(concurrency-mt-unsafe)
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/sdfutures-ssh-XXXXXX";
        int fd = ::mkostemp(pattern.data(), O_CLOEXEC);
        if (fd < 0) return;  // ssh's messages then go to this process's standard error
        ::close(fd);
        path_ = std::move(pattern);
    }
    ~SshLog() {
        if (!path_.empty()) ::unlink(path_.c_str());
    }
    SshLog(const SshLog&) = delete;
    SshLog& operator=(const SshLog&) = delete;
    const std::string& path() const noexcept { return path_; }
    // What ssh wrote, its lines joined by "; ".
    std::string text() const {
        if (path_.empty()) return {};
        std::ifstream in(path_);
        std::string all, line;
        while (std::getline(in, line)) {
            if (line.empty()) continue;
            all += (all.empty() ? "" : "; ") + line;
        }
        return all;
    }

private:
    std::string path_;
};

}  // namespace

Bus Bus::system() {
    return Bus(connect(local("system", [] { return sdbus::createSystemBusConnection(); })));
}

Bus Bus::user() {
    return Bus(connect(local("user", [] { return sdbus::createSessionBusConnection(); })));
}

Bus Bus::address(const std::string& address) {
    if (address.empty()) throw BusError(address, "the address is empty");
    return Bus(connect(local(address, [&] { return sdbus::createSessionBusConnectionWithAddress(address); })));
}

Bus Bus::remote(const std::string& host, const RemoteOptions& options) {
    const SshDestination to = parse_host(host);
    const std::string ssh = find_program(options.ssh_program);
    if (ssh.empty())
        throw BusError(host, "cannot run the ssh client '" + options.ssh_program + "': " +
                                 (options.ssh_program.find('/') != std::string::npos ? "not an executable file"
                                                                                    : "not found in $PATH"));
    SshLog log;
    // -x: no X11 forwarding; -T: no terminal, the connection is a byte stream; BatchMode: never ask (nobody
    // could answer), fail instead.
    std::vector<std::string> argv{"-xT", "-o", "BatchMode=yes"};
    if (!log.path().empty()) argv.insert(argv.end(), {"-E", log.path()});
    if (!to.port.empty()) argv.insert(argv.end(), {"-p", to.port});
    if (!options.identity_file.empty()) {
        // As a configuration line, not -i: ssh expands %-tokens (%d, %u, ...) in an identity file's name, and
        // -i checks the name before expanding it, so a '%' could be passed neither raw nor as "%%". In the
        // line, the quotes keep spaces and "%%" is '%'; a path means itself.
        if (options.identity_file.find_first_of("\"\n") != std::string::npos)
            throw BusError(host, "the identity file '" + options.identity_file +
                                     "' holds a '\"' or a newline, which ssh's options cannot carry");
        std::string path;
        for (char c : options.identity_file) path += c == '%' ? std::string("%%") : std::string(1, c);
        argv.insert(argv.end(), {"-o", "IdentityFile=\"" + path + "\""});
    }
    if (options.connect_timeout)
        argv.insert(argv.end(), {"-o", "ConnectTimeout=" + std::to_string(std::max<long long>(1, options.connect_timeout->count()))});
    argv.insert(argv.end(), options.ssh_arguments.begin(), options.ssh_arguments.end());
    // "--": a destination (or user) that looked like an option would not be taken for one.
    argv.insert(argv.end(), {"--", to.destination, shell_word(options.bridge_program)});
    if (!options.bus_address.empty()) argv.push_back(shell_word("--bus-path=" + options.bus_address));

    std::string address = "unixexec:path=" + address_escape(ssh) + ",argv0=" + address_escape(options.ssh_program);
    for (size_t i = 0; i < argv.size(); ++i)
        address += ",argv" + std::to_string(i + 1) + "=" + address_escape(argv[i]);

    std::string command = "ssh";
    for (auto& a : argv)
        if (a != log.path() && a != "-E") command += " " + a;
    Connecting how;
    how.description = host + " over ssh" + (options.bus_address.empty() ? "" : ", bus " + options.bus_address);
    how.error_address = host;
    how.remote_host = host;
    how.open = [&] { return sdbus::createSessionBusConnectionWithAddress(address); };
    how.explain = [&](bool, const std::string& why) {
        std::string said = log.text();
        return "no systemd manager answers through `" + command + "`: " + (said.empty() ? why : said + " (" + why + ")");
    };
    return Bus(connect(how));
}

Bus Bus::automatic() {
    // getenv races only with setenv/putenv, which sdfutures calls in forked children alone.
    const char* env = std::getenv("SDFUTURES_BUS");  // NOLINT(concurrency-mt-unsafe)
    std::string choice = env ? env : "";
    if (choice == "system") return system();
    if (choice == "user") return user();
    if (!choice.empty()) return address(choice);
    return geteuid() == 0 ? system() : user();
}

const std::string& Bus::description() const noexcept { return state_->description; }

sdbus::IConnection& Bus::connection() const { return *state_->connection; }

std::unique_lock<std::mutex> Bus::lock() const { return std::unique_lock(state_->mutex); }

}  // namespace sdfutures
