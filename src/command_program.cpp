// Command: finding the program to execute, as systemd-run does, before systemd is asked.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "command_impl.hpp"

namespace sdfutures {

namespace {

// What systemd-run falls back to when $PATH is unset.
constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

}  // namespace

ProgramNotFound::ProgramNotFound(std::string program, const std::string& why)
    : Error("cannot run '" + program + "': " + why), program_(std::move(program)) {}

namespace detail {

std::string resolve_program(const std::string& name, const Properties& properties,
                            const std::optional<std::string>& remote_host) {
    if (name.empty()) throw ProgramNotFound(name, "the program name is empty");
    // The other host's files are not this host's: only systemd there can check the path.
    if (remote_host) {
        if (name.front() != '/')
            throw ProgramNotFound(name, "give an absolute path: the program runs on " + *remote_host +
                                            ", whose $PATH cannot be searched from here");
        return name;
    }
    // The path is resolved inside a different root there; only systemd can check it.
    if (properties.contains("RootDirectory") || properties.contains("RootImage")) {
        if (name.front() != '/') throw ProgramNotFound(name, "give an absolute path when RootDirectory=/RootImage= is set");
        return name;
    }
    auto check = [](const std::string& path) -> std::string {
        struct stat st{};
        if (::stat(path.c_str(), &st) < 0) return errno_text(errno);
        if (!S_ISREG(st.st_mode)) return "not a regular file";
        if (::access(path.c_str(), X_OK) < 0) return "not executable: " + errno_text(errno);
        return {};
    };
    if (name.front() == '/') {
        std::string why = check(name);
        if (!why.empty()) throw ProgramNotFound(name, why);
        return name;
    }
    if (name.find('/') != std::string::npos)
        throw ProgramNotFound(name, "a relative path cannot be run in a unit (it does not share this process's "
                                    "working directory): give an absolute path");
    // getenv races only with setenv/putenv, which sdfutures calls in forked children alone.
    const char* env = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe)
    std::string path = env && *env ? env : kDefaultPath;
    size_t start = 0;
    while (start <= path.size()) {
        size_t end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        std::string dir = path.substr(start, end - start);
        // Empty or relative $PATH entries mean this process's directory, which the unit does not share.
        if (!dir.empty() && dir.front() == '/') {
            std::string candidate = std::move(dir);
            candidate += '/';
            candidate += name;
            if (check(candidate).empty()) return candidate;
        }
        start = end + 1;
    }
    throw ProgramNotFound(name, "not found in $PATH (" + path + "); give an absolute path");
}

// systemd expands ${VAR}, a bare $VAR word and $$ in ExecStart= arguments, also when they come over D-Bus;
// doubling every '$' makes its expansion give back exactly what the caller wrote, as execve() would.
std::vector<std::string> escape_for_exec(const std::vector<std::string>& argv) {
    std::vector<std::string> out;
    out.reserve(argv.size());
    for (auto& a : argv) {
        std::string e;
        e.reserve(a.size());
        for (char c : a) {
            if (c == '$') e += '$';
            e += c;
        }
        out.push_back(std::move(e));
    }
    return out;
}

}  // namespace detail
}  // namespace sdfutures
