#include "property_reach.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "property_catalog.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/process.hpp"

namespace sdfutures {
namespace {

using detail::Forked;

// How the row's property reaches a forked child; nullopt when it does not, the library's own included.
std::optional<PropertyReach> forked_reach(const detail::PropertyRow& row) {
    return row.owned_by_library ? std::nullopt : detail::reach_of(row.forked);
}

std::string why_not_forked(const detail::PropertyRow& row) {
    if (row.owned_by_library) return "sdfutures sets it itself to tie the unit to its owner";
    switch (row.forked) {
        case Forked::dynamic_user:
            return "systemd allocates the user for a program it executes and adds a seccomp filter "
                   "(RestrictSUIDSGID=) that cannot be copied to a forked process; use StartMethod::exec, User= or "
                   "sdfutures::Command";
        case Forked::needs_exec:
            return "systemd enforces it with a seccomp filter, capability set or mount it applies when it executes "
                   "a program, which a forked process does not get; use StartMethod::exec or sdfutures::Command";
        case Forked::unverified_filter:
            return "systemd enforces it with BPF on the unified cgroup hierarchy and silently skips it where that is "
                   "unavailable; sdfutures does not yet verify it took effect";
        case Forked::unverified_userns:
            return "joining a user namespace would change the child's credentials in ways not yet verified";
        default: return "sdfutures does not know how it would reach a forked process";
    }
}

}  // namespace

std::optional<PropertyReach> property_reach(std::string_view name) {
    const detail::PropertyRow* row = detail::find_property(name);
    return row ? forked_reach(*row) : std::nullopt;
}

void check_properties_reach_forked_children(const Properties& properties) {
    for (auto& e : properties.entries()) {
        if (e.typed)
            throw UnsupportedProperty(e.name, "a typed property cannot be checked to reach a forked process; "
                                              "use sdfutures::Command or Manager for it");
        const detail::PropertyRow* row = detail::find_property(e.name);
        if (!row) throw UnsupportedProperty(e.name, "sdfutures does not know how it would reach a forked process");
        if (!forked_reach(*row)) throw UnsupportedProperty(e.name, why_not_forked(*row));
        if (e.name == "Delegate" && !parse::boolean(e.name, e.text))
            throw UnsupportedProperty(e.name, "sdfutures needs Delegate=yes to attach processes to the unit");
    }
    check_properties_a_user_manager_honours(properties);
}

void check_properties_a_user_manager_honours(const Properties& properties) {
    if (::geteuid() == 0) return;

    // Not root (docs/unprivileged.md). The child keeps this process's uid, groups and namespaces, because a non-root
    // process can change none of them; so what would need that is refused here, before a unit or a process exists,
    // instead of failing in the child or silently not applying. Measured with systemd 252's manager of an
    // unprivileged user: User= and SupplementaryGroups= fail the start (216/GROUP) even naming the caller's own
    // identity; Group= works only as the caller's own group; PrivateTmp= and the other namespace properties start
    // the unit in the caller's own namespaces, without a word.
    const uid_t uid = ::geteuid();
    const gid_t gid = ::getegid();
    std::string user_name = std::to_string(uid), group_name = std::to_string(gid);
    {
        std::vector<char> buffer(1 << 16);
        passwd pw{}, *pw_found = nullptr;
        if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &pw_found) == 0 && pw_found) user_name = pw.pw_name;
        group gr{}, *gr_found = nullptr;
        if (::getgrgid_r(gid, &gr, buffer.data(), buffer.size(), &gr_found) == 0 && gr_found) group_name = gr.gr_name;
    }
    const std::string caller = "this process runs as " + user_name + " (uid " + std::to_string(uid) + ", gid " +
                               std::to_string(gid) + ")";
    auto names_gid = [&](const std::string& text) { return text == group_name || text == std::to_string(gid); };
    for (auto& e : properties.entries()) {
        if (e.name == "User") {
            if (e.text == user_name || e.text == std::to_string(uid))
                throw UnsupportedProperty(
                    e.name, "a non-root user's own systemd manager cannot apply User=, not even naming that user "
                            "(systemd fails the start with 216/GROUP: initgroups() needs root); leave it out, " +
                                caller + " and the work runs as the same user");
            throw UnsupportedProperty(
                e.name, "running the work as user '" + e.text + "' needs root: " + caller +
                            ", a non-root process cannot change its uid, and a user's own systemd manager cannot "
                            "start a unit as another user");
        }
        if (e.name == "Group" && !names_gid(e.text))
            throw UnsupportedProperty(
                e.name, "running the work with group '" + e.text + "' needs root: " + caller +
                            ", a non-root process cannot change its gid, and a user's own systemd manager cannot "
                            "start a unit with another group (Group= naming the caller's own group is accepted)");
        if (e.name == "SupplementaryGroups" && !parse::words(e.name, e.text).empty())
            throw UnsupportedProperty(
                e.name, "setting supplementary groups needs root: a non-root process cannot change its groups, and "
                        "a user's own systemd manager fails the start with 216/GROUP even for the caller's own groups "
                        "(setgroups() needs CAP_SETGID); " + caller);
        if (property_reach(e.name) == PropertyReach::namespaces) {
            bool enabled = true;  // ProtectSystem=strict, ProtectHome=tmpfs, ...: not booleans, all of them enable
            try {
                enabled = parse::boolean(e.name, e.text);
            } catch (const PropertyError&) {
            }
            if (enabled)
                throw UnsupportedProperty(
                    e.name, "it needs root: a non-root user's own systemd manager cannot create the namespace it "
                            "needs and starts the unit without it, saying nothing, and a non-root process could not "
                            "join one either; the work would run without the protection asked for (" + caller + ")");
        }
    }
}


namespace detail {

void check_properties_for_start_method(const Properties& properties, StartMethod method) {
    if (method != StartMethod::exec) return check_properties_reach_forked_children(properties);
    for (auto& e : properties.entries()) {
        const detail::PropertyRow* row = detail::find_property(e.name);
        if (row && row->owned_by_library)
            throw UnsupportedProperty(e.name, "sdfutures sets it itself: with StartMethod::exec the unit's main "
                                              "program is this program serving the pool, and its lifetime is the "
                                              "pool's; use sdfutures::Command to run a program of your own");
    }
    check_properties_a_user_manager_honours(properties);
}

}  // namespace detail
}  // namespace sdfutures
