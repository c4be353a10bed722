#include "entry_plan.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "fd_util.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::detail {
namespace {

// Far beyond any /proc file entry reads (the environment is the largest, and the release it goes into is bounded
// by kMaxReleaseBytes anyway): only a bound on what a read may take.
constexpr std::size_t kMaxProcFileBytes = 16u << 20;

// /proc/PID/<name>, read whole through the descriptor of /proc/PID: once the process is gone, its files refuse to
// open (ESRCH) rather than show another process that got the pid since. False with errno set when it cannot.
bool read_proc_file(int proc_dir, const char* name, std::string& out) {
    Fd fd(::openat(proc_dir, name, O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    std::optional<std::string> text = read_to_end(fd.get(), kMaxProcFileBytes);
    if (!text) return false;
    out = std::move(*text);
    return true;
}

[[noreturn]] void refuse(std::string step, int err, const std::string& detail) {
    throw SetupError(std::move(step), err, detail);
}

// The value of "Field:" in /proc/PID/status.
std::string_view status_field(std::string_view status, std::string_view field) {
    std::string key = "\n" + std::string(field) + ":";
    auto pos = status.find(key);
    if (pos == std::string_view::npos) return {};
    pos += key.size();
    auto end = status.find('\n', pos);
    std::string_view value = status.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    auto first = value.find_first_not_of(" \t");
    return first == std::string_view::npos ? std::string_view() : value.substr(first);
}

// Whitespace-separated unsigned numbers; false when a word is not one (or does not fit).
bool parse_numbers(std::string_view text, int base, std::vector<unsigned long long>& out) {
    std::string copy(text);
    const char* p = copy.c_str();
    for (;;) {
        while (*p == ' ' || *p == '\t') ++p;
        if (*p == '\0') return true;
        char* end = nullptr;
        errno = 0;
        unsigned long long value = std::strtoull(p, &end, base);
        if (end == p || errno != 0 || (*end != '\0' && *end != ' ' && *end != '\t')) return false;
        out.push_back(value);
        p = end;
    }
}

// The next word of `text`, which then starts after it.
std::string_view next_word(std::string_view& text) {
    auto start = text.find_first_not_of(" \t");
    if (start == std::string_view::npos) return text = {};
    auto end = text.find_first_of(" \t", start);
    std::string_view word = text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end);
    return word;
}

std::optional<unsigned long long> one_number(std::string_view text, int base) {
    std::vector<unsigned long long> values;
    if (!parse_numbers(text, base, values) || values.size() != 1) return std::nullopt;
    return values[0];
}

void read_credentials(std::string_view status, EntryPlan& plan) {
    std::vector<unsigned long long> uids, gids, groups;
    if (!parse_numbers(status_field(status, "Uid"), 10, uids) || !parse_numbers(status_field(status, "Gid"), 10, gids) ||
        !parse_numbers(status_field(status, "Groups"), 10, groups) || uids.size() < 3 || gids.size() < 3)
        refuse("read credentials", 0, "malformed /proc status");
    plan.uid = static_cast<uid_t>(uids[0]);
    plan.gid = static_cast<gid_t>(gids[0]);
    plan.groups.assign(groups.begin(), groups.end());
}

void read_status(std::string_view status, EntryPlan& plan) {
    // A kernel without seccomp shows no Seccomp field, and can have no filter.
    std::string_view seccomp_field = status_field(status, "Seccomp");
    std::optional<unsigned long long> seccomp = seccomp_field.empty() ? std::optional(0ull) : one_number(seccomp_field, 10);
    if (!seccomp) refuse("check seccomp", 0, "malformed Seccomp in /proc status");
    if (*seccomp != 0)
        refuse("check seccomp", 0,
               "the unit's main process runs under a seccomp filter, which cannot be copied to a forked process (a "
               "property such as SystemCallFilter= or one that implies it); use Command");
    read_credentials(status, plan);
    auto bounding = one_number(status_field(status, "CapBnd"), 16);
    auto umask = one_number(status_field(status, "Umask"), 8);
    auto no_new_privs = one_number(status_field(status, "NoNewPrivs"), 10);
    if (!bounding) refuse("read capability bounding set", 0, "malformed CapBnd in /proc status");
    if (!umask) refuse("read UMask=", 0, "malformed Umask in /proc status");
    if (!no_new_privs) refuse("read NoNewPrivileges=", 0, "malformed NoNewPrivs in /proc status");
    plan.bounding_set = *bounding;
    plan.umask = static_cast<mode_t>(*umask);
    plan.no_new_privs = *no_new_privs == 1;
}

// /proc/PID/limits rather than prlimit(2): reading another user's limits with prlimit needs CAP_SYS_RESOURCE,
// which sandboxes (and this project's CI) may withhold even from root. The file lists RLIMIT_* in order, after a
// header line, each as a name padded to 26 columns, then the soft and the hard limit.
void read_rlimits(std::string_view limits, EntryPlan& plan) {
    constexpr std::size_t kNameWidth = 26;
    std::size_t line_start = limits.find('\n');
    while (line_start != std::string_view::npos && line_start + 1 < limits.size() && plan.rlimits.size() < RLIM_NLIMITS) {
        ++line_start;
        std::size_t line_end = limits.find('\n', line_start);
        std::string_view line = limits.substr(line_start, line_end == std::string_view::npos ? std::string_view::npos
                                                                                              : line_end - line_start);
        if (line.size() <= kNameWidth) refuse("read rlimits", 0, "malformed line: " + std::string(line));
        std::string_view values = line.substr(kNameWidth);
        std::string_view soft = next_word(values), hard = next_word(values);
        auto parse_limit = [&](std::string_view text) -> rlim_t {
            if (text == "unlimited") return RLIM_INFINITY;
            auto value = one_number(text, 10);
            if (!value) refuse("read rlimits", 0, "malformed line: " + std::string(line));
            return static_cast<rlim_t>(*value);
        };
        plan.rlimits.push_back({parse_limit(soft), parse_limit(hard)});
        line_start = line_end;
    }
}

// /proc/PID/stat's 19th field; the fields after the command name, which is in parentheses and may contain spaces.
void read_nice(const std::string& stat, EntryPlan& plan) {
    auto close = stat.rfind(')');
    if (close == std::string::npos || close + 2 > stat.size()) refuse("read nice", 0, "malformed stat: " + stat);
    const char* p = stat.c_str() + close + 2;
    for (int field = 3; field < 19; ++field) {
        p = std::strchr(p, ' ');
        if (p == nullptr) refuse("read nice", 0, "malformed stat: " + stat);
        ++p;
    }
    char* end = nullptr;
    errno = 0;
    long nice = std::strtol(p, &end, 10);
    if (end == p || errno != 0 || nice < -20 || nice > 19) refuse("read nice", 0, "malformed stat: " + stat);
    plan.nice = static_cast<int>(nice);
}

void read_namespaces(int proc_dir, EntryPlan& plan) {
    for (std::size_t i = 0; i < kEntryNamespaces.size(); ++i) {
        std::string link = std::string("ns/") + kEntryNamespaces[i];
        struct stat st {};
        if (::fstatat(proc_dir, link.c_str(), &st, 0) != 0)
            refuse(std::string("inspect namespace ") + kEntryNamespaces[i], errno,
                   "/proc/" + std::to_string(plan.main_pid) + "/" + link);
        plan.namespace_inodes[i] = st.st_ino;
    }
}

// The encoding: fixed-size fields in native byte order (owner and child are one program on one machine), each
// vector and the environment preceded by its length as a uint32_t.
constexpr std::uint32_t kPlanTag = 0x50456473;  // "sdEP"

template <typename T>
void put(std::string& out, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

class PlanReader {
public:
    explicit PlanReader(std::string_view body) : rest_(body) {}
    template <typename T>
    bool get(T& value) {
        static_assert(std::is_trivially_copyable_v<T>);
        if (rest_.size() < sizeof value) return false;
        std::memcpy(&value, rest_.data(), sizeof value);
        rest_.remove_prefix(sizeof value);
        return true;
    }
    bool get_bytes(std::size_t n, std::string_view& out) {
        if (rest_.size() < n) return false;
        out = rest_.substr(0, n);
        rest_.remove_prefix(n);
        return true;
    }
    bool done() const { return rest_.empty(); }

private:
    std::string_view rest_;
};

}  // namespace

EntryPlan read_entry_plan(pid_t main_pid) {
    EntryPlan plan;
    plan.main_pid = main_pid;
    const std::string proc = "/proc/" + std::to_string(main_pid);
    Fd proc_dir(::open(proc.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!proc_dir) refuse("read the unit's main process", errno, proc);
    char exe[PATH_MAX] = {};
    ssize_t n = ::readlinkat(proc_dir.get(), "exe", exe, sizeof exe - 1);
    if (n < 0 || !std::string_view(exe, static_cast<std::size_t>(n)).ends_with("/cat"))
        refuse("read the unit's main process", n < 0 ? errno : 0, proc + " is no longer the exec'd anchor program");
    std::string status, limits, stat;
    if (!read_proc_file(proc_dir.get(), "status", status)) refuse("read the unit's main process", errno, proc + "/status");
    if (!read_proc_file(proc_dir.get(), "limits", limits)) refuse("read rlimits", errno, "limits");
    if (!read_proc_file(proc_dir.get(), "stat", stat)) refuse("read nice", errno, "stat");
    if (!read_proc_file(proc_dir.get(), "environ", plan.environment))
        refuse("read Environment=", errno, "environ of the unit's main process");
    read_namespaces(proc_dir.get(), plan);
    read_status(status, plan);
    read_rlimits(limits, plan);
    read_nice(stat, plan);
    return plan;
}

std::string encode_entry_plan(const EntryPlan& plan) {
    std::string out;
    out.reserve(64 + plan.groups.size() * sizeof(gid_t) + plan.rlimits.size() * sizeof(struct rlimit) +
                plan.environment.size());
    put(out, kPlanTag);
    put(out, plan.main_pid);
    put(out, plan.namespace_inodes);
    put(out, plan.uid);
    put(out, plan.gid);
    put(out, plan.bounding_set);
    put(out, static_cast<std::uint8_t>(plan.no_new_privs));
    put(out, plan.umask);
    put(out, plan.nice);
    put(out, static_cast<std::uint32_t>(plan.groups.size()));
    for (gid_t g : plan.groups) put(out, g);
    put(out, static_cast<std::uint32_t>(plan.rlimits.size()));
    for (const auto& limit : plan.rlimits) put(out, limit);
    put(out, static_cast<std::uint32_t>(plan.environment.size()));
    out += plan.environment;
    return out;
}

std::optional<EntryPlan> decode_entry_plan(std::string_view body) {
    PlanReader in(body);
    EntryPlan plan;
    std::uint32_t tag = 0, groups = 0, rlimits = 0, environment = 0;
    std::uint8_t no_new_privs = 0;
    if (!in.get(tag) || tag != kPlanTag || !in.get(plan.main_pid) || plan.main_pid <= 0 ||
        !in.get(plan.namespace_inodes) || !in.get(plan.uid) || !in.get(plan.gid) || !in.get(plan.bounding_set) ||
        !in.get(no_new_privs) || no_new_privs > 1 || !in.get(plan.umask) || plan.umask > 0777 || !in.get(plan.nice) ||
        plan.nice < -20 || plan.nice > 19 || !in.get(groups) || groups > NGROUPS_MAX)
        return std::nullopt;
    plan.no_new_privs = no_new_privs == 1;
    plan.groups.resize(groups);
    for (gid_t& g : plan.groups)
        if (!in.get(g)) return std::nullopt;
    if (!in.get(rlimits) || rlimits > RLIM_NLIMITS) return std::nullopt;
    plan.rlimits.resize(rlimits);
    for (auto& limit : plan.rlimits)
        if (!in.get(limit)) return std::nullopt;
    std::string_view environment_bytes;
    if (!in.get(environment) || !in.get_bytes(environment, environment_bytes) || !in.done()) return std::nullopt;
    plan.environment.assign(environment_bytes);
    return plan;
}

}  // namespace sdfutures::detail
