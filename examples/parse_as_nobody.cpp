// parse_as_nobody: parse untrusted input in a throw-away sandbox.
//
// The parser below is ordinary C++ code with nothing special about it. sdfutures::run forks a child, places it in
// a transient systemd unit with
//     User=nobody          -> the parser runs without root's rights,
//     PrivateNetwork=yes   -> in a network namespace of its own (no way out),
//     MemoryMax=64M        -> and cannot eat the machine's memory,
// runs the parser there and brings its result (or its exception) back. To show that the limits are real, the child
// also reports who it is, whether it can read a root-only file the parent created, whether it can reach a TCP port
// the parent listens on, and which network interfaces it sees.
//
// Needs root (User= is applied by a system manager, or a user manager running as root):
//     scripts/with-systemd build/examples/parse_as_nobody
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <sdfutures/sdfutures.hpp>

namespace {

// ---- the untrusted part: a tiny "key = value" parser ---------------------------------------------------------

// Lines are "key = value"; blank lines and lines starting with '#' are skipped. Keys are [A-Za-z0-9_.-]+.
// Anything else is rejected with the line number, as std::invalid_argument (which comes back to the parent as
// itself).
std::map<std::string, std::string> parse_settings(std::string_view text) {
    auto trim = [](std::string_view s) {
        while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
        while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
        return s;
    };
    std::map<std::string, std::string> settings;
    int line_number = 0;
    while (!text.empty()) {
        auto end = text.find('\n');
        std::string_view line = trim(text.substr(0, end));
        text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
        ++line_number;
        if (line.empty() || line.front() == '#') continue;

        auto fail = [&](const std::string& why) {
            throw std::invalid_argument("line " + std::to_string(line_number) + ": " + why);
        };
        auto equals = line.find('=');
        if (equals == std::string_view::npos) fail("expected 'key = value'");
        std::string_view key = trim(line.substr(0, equals));
        std::string_view value = trim(line.substr(equals + 1));
        if (key.empty() || key.size() > 64) fail("a key has 1 to 64 characters");
        for (char c : key)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-')
                fail("bad character in key '" + std::string(key) + "'");
        if (settings.size() >= 1000) fail("more than 1000 settings");
        if (!settings.emplace(key, value).second) fail("duplicate key '" + std::string(key) + "'");
    }
    return settings;
}

// ---- what the child reports back ------------------------------------------------------------------------------

struct Findings {
    std::map<std::string, std::string> settings;  // the parse result
    unsigned uid = 0;
    std::string user;
    std::string secret_file;              // what opening the root-only file gave
    std::string loopback_connect;         // what connecting to the parent's listening port gave
    std::vector<std::string> interfaces;  // the network interfaces visible, with their state
    std::string memory_limit;             // the memory limit of the cgroup the child is in
    MSGPACK_DEFINE(settings, uid, user, secret_file, loopback_connect, interfaces, memory_limit);
};

std::string error_text(int error_number) { return std::strerror(error_number); }

std::string try_read(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "open failed: " + error_text(errno);
    char buffer[64];
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    ::close(fd);
    return n < 0 ? "read failed: " + error_text(errno) : "read " + std::to_string(n) + " bytes";
}

std::string try_connect(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return "socket failed: " + error_text(errno);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address);
    int error_number = errno;
    ::close(fd);
    return rc == 0 ? "connected" : "failed: " + error_text(error_number);
}

std::vector<std::string> list_interfaces() {
    std::vector<std::string> out;
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (struct if_nameindex* names = ::if_nameindex()) {
        for (struct if_nameindex* i = names; i->if_index != 0; ++i) {
            ifreq request{};
            std::strncpy(request.ifr_name, i->if_name, IFNAMSIZ - 1);
            bool up = fd >= 0 && ::ioctl(fd, SIOCGIFFLAGS, &request) == 0 && (request.ifr_flags & IFF_UP);
            out.push_back(std::string(i->if_name) + (up ? " (UP)" : " (DOWN)"));
        }
        ::if_freenameindex(names);
    }
    if (fd >= 0) ::close(fd);
    return out;
}

std::string first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

// The memory limit of the calling process's cgroup: cgroup v1's memory controller, else cgroup v2's memory.max.
std::string memory_limit() {
    std::ifstream cgroups("/proc/self/cgroup");
    std::string line, v1, v2;
    while (std::getline(cgroups, line)) {  // "ID:CONTROLLERS:PATH"
        auto first = line.find(':'), second = line.find(':', first + 1);
        std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
        if (("," + controllers + ",").find(",memory,") != std::string::npos) v1 = path;
        if (line.starts_with("0::")) v2 = path;
    }
    std::string bytes = !v1.empty() ? first_line("/sys/fs/cgroup/memory" + v1 + "/memory.limit_in_bytes")
                                    : first_line("/sys/fs/cgroup" + v2 + "/memory.max");
    if (bytes.empty() || !std::isdigit(static_cast<unsigned char>(bytes[0]))) return bytes.empty() ? "?" : bytes;
    return std::to_string(std::stoull(bytes) >> 20) + " MiB";
}

// Runs in the sandbox.
Findings parse_in_sandbox(const std::string& input, const std::string& secret_path, std::uint16_t port) {
    Findings f;
    f.uid = ::getuid();
    const passwd* pw = ::getpwuid(f.uid);
    f.user = pw ? pw->pw_name : "?";
    f.secret_file = try_read(secret_path);
    f.loopback_connect = try_connect(port);
    f.interfaces = list_interfaces();
    f.memory_limit = memory_limit();
    f.settings = parse_settings(input);  // throws on bad input: the exception reaches the parent
    return f;
}

// ---- the parent -----------------------------------------------------------------------------------------------

// A 0600 file owned by root, removed when this goes out of scope.
struct SecretFile {
    std::string path = "/tmp/sdfutures-secret-XXXXXX";
    SecretFile() {
        int fd = ::mkstemp(path.data());
        if (fd < 0) throw std::runtime_error("mkstemp: " + error_text(errno));
        ::fchmod(fd, 0600);
        const char text[] = "root's secret\n";
        bool written = ::write(fd, text, sizeof text - 1) == static_cast<ssize_t>(sizeof text - 1);
        ::close(fd);
        if (!written) throw std::runtime_error("cannot write " + path);
    }
    ~SecretFile() { ::unlink(path.c_str()); }
};

// A TCP socket listening on 127.0.0.1 (port chosen by the kernel), closed when this goes out of scope.
struct Listener {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    std::uint16_t port = 0;
    Listener() {
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t size = sizeof address;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(fd, 8) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0)
            throw std::runtime_error("cannot listen on 127.0.0.1: " + error_text(errno));
        port = ntohs(address.sin_port);
    }
    ~Listener() { ::close(fd); }
};

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (auto& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

}  // namespace

int main() {
    const std::string upload =
        "# settings uploaded by a user\n"
        "name = quarterly report\n"
        "threads = 4\n"
        "output.format = csv\n";
    const std::string hostile_upload = "name = x\n$(rm -rf /) = 1\n";

    try {
        SecretFile secret;
        Listener listener;
        const sdfutures::Properties sandbox{{"User", "nobody"}, {"PrivateNetwork", "yes"}, {"MemoryMax", "64M"}};

        std::cout << "parent: uid " << ::getuid() << ", " << secret.path << " (0600, root): "
                  << try_read(secret.path) << ", 127.0.0.1:" << listener.port << " " << try_connect(listener.port)
                  << ", interfaces: " << join(list_interfaces()) << "\n\n";

        std::cout << "sandbox: User=nobody PrivateNetwork=yes MemoryMax=64M\n";
        Findings f = sdfutures::run(sandbox, parse_in_sandbox, upload, secret.path, listener.port);
        std::cout << "  parser ran as uid " << f.uid << " (" << f.user << ")\n"
                  << "  " << secret.path << ": " << f.secret_file << "\n"
                  << "  connect to the parent's 127.0.0.1:" << listener.port << ": " << f.loopback_connect << "\n"
                  << "  network interfaces: " << join(f.interfaces) << "\n"
                  << "  memory limit of its cgroup: " << f.memory_limit << "\n"
                  << "  parse result (" << f.settings.size() << " settings):\n";
        for (auto& [key, value] : f.settings) std::cout << "    " << key << " = \"" << value << "\"\n";

        std::cout << "\nsandbox, hostile input:\n";
        try {
            sdfutures::run(sandbox, parse_in_sandbox, hostile_upload, secret.path, listener.port);
            std::cout << "  accepted?!\n";
            return 1;
        } catch (const std::invalid_argument& e) {
            std::cout << "  rejected in the sandbox, rethrown here as std::invalid_argument: " << e.what() << "\n";
        }

        const bool contained = f.uid != 0 && f.secret_file.starts_with("open failed") &&
                               f.loopback_connect != "connected" && f.memory_limit == "64 MiB" &&
                               f.settings.size() == 3;
        std::cout << "\n" << (contained ? "ok: the parser was contained" : "NOT CONTAINED") << "\n";
        return contained ? 0 : 1;
    } catch (const sdfutures::Error& e) {
        std::cerr << "parse_as_nobody: " << e.what()
                  << "\n(run it as root under scripts/with-systemd: User= needs a privileged manager)\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "parse_as_nobody: " << e.what() << "\n";
        return 1;
    }
}
