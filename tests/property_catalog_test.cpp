// The property catalogue (src/property_catalog.hpp) row by row against a real manager: every row's example
// converts, the manager takes it and it reads back as sent; what a row says reaches a forked child is observed in
// the child; what needs a layout this machine lacks is refused naming the requirement. A row added without a way
// to observe its reach fails here, by name.
#include <grp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "anchored_unit.hpp"
#include "property_catalog.hpp"
#include "property_reach.hpp"
#include "support/manager_environment.hpp"
#include "support/unit_cleanup.hpp"

namespace sdfutures {
namespace {

using detail::Forked;
using detail::property_catalog;
using detail::PropertyRow;
using testing::SystemdTest;
using testing::UnitCleanup;
using testing::unique_unit_name;

// A D-Bus value as text, for comparing what was sent with what reads back. String lists are sorted: systemd
// keeps some as sets.
std::string text_of(const sdbus::Variant& v) {
    using Strings = std::vector<std::string>;
    auto sorted = [](Strings s) {
        std::sort(s.begin(), s.end());
        std::string out = "[";
        for (auto& w : s) out += w + ",";
        return out + "]";
    };
    const std::string type = v.peekValueType();
    if (type == "b") return v.get<bool>() ? "true" : "false";
    if (type == "i") return std::to_string(v.get<int32_t>());
    if (type == "u") return std::to_string(v.get<uint32_t>());
    if (type == "t") return std::to_string(v.get<uint64_t>());
    if (type == "s") return v.get<std::string>();
    if (type == "as") return sorted(v.get<Strings>());
    if (type == "ay") {
        std::string out;
        for (auto b : v.get<std::vector<uint8_t>>()) out += std::to_string(b) + ",";
        return out;
    }
    if (type == "(bas)") {
        auto s = v.get<sdbus::Struct<bool, Strings>>();
        return (std::get<0>(s) ? "allow " : "deny ") + sorted(std::get<1>(s));
    }
    if (type == "a(ss)") {
        std::string out;
        for (auto& e : v.get<std::vector<sdbus::Struct<std::string, std::string>>>())
            out += std::get<0>(e) + "=" + std::get<1>(e) + ",";
        return out;
    }
    if (type == "a(iayu)") {
        Strings prefixes;
        for (auto& e : v.get<std::vector<sdbus::Struct<int32_t, std::vector<uint8_t>, uint32_t>>>()) {
            std::string p = std::to_string(std::get<0>(e)) + ":";
            for (auto b : std::get<1>(e)) p += std::to_string(b) + ".";
            prefixes.push_back(p + "/" + std::to_string(std::get<2>(e)));
        }
        return sorted(prefixes);
    }
    // ExecStart: sent as (path, argv, ignore failure), read back with the run's timestamps and status too.
    auto commands = [&](const auto& list) {
        std::string out;
        for (auto& e : list) out += std::get<0>(e) + " " + sorted(std::get<1>(e)) + (std::get<2>(e) ? " -" : "");
        return out;
    };
    if (type == "a(sasb)") return commands(v.get<std::vector<sdbus::Struct<std::string, Strings, bool>>>());
    if (type == "a(sasbttttuii)")
        return commands(v.get<std::vector<sdbus::Struct<std::string, Strings, bool, uint64_t, uint64_t, uint64_t,
                                                        uint64_t, uint32_t, int32_t, int32_t>>>());
    return "(a value of type " + type + " this test cannot print)";
}

bool row_is_of_a_socket(const PropertyRow& row) {
    return row.name.starts_with("Listen") || row.name == "FileDescriptorName";
}

std::string socket_example(const PropertyRow& row, const std::string& stem) {
    // An abstract address: nothing is left on disk, and two rows never share one.
    if (row.name.starts_with("Listen")) return "@" + stem + "-" + std::string(row.name);
    return std::string(row.example);
}

class PropertyCatalogTest : public SystemdTest {
protected:
    SystemInfo info() { return system_info(bus()); }
};

TEST(PropertyCatalog, EveryRowIsFoundByItsNameAndEveryExampleConverts) {
    ASSERT_GT(property_catalog().size(), 100u);
    for (const PropertyRow& row : property_catalog()) {
        SCOPED_TRACE(std::string(row.name));
        EXPECT_EQ(detail::find_property(row.name), &row);
        if (row.convert) {
            ASSERT_FALSE(row.example.empty()) << "a row with unit-file syntax needs an example for this test";
            EXPECT_FALSE(parse_property(row.name, row.example).empty());
        } else {
            // Known, but only as a typed D-Bus property: set() says to use set_typed.
            try {
                parse_property(row.name, "x");
                ADD_FAILURE() << "converted without a converter";
            } catch (const UnsupportedProperty& e) {
                EXPECT_NE(std::string(e.what()).find("set_typed"), std::string::npos) << e.what();
            }
        }
        // What reaches a forked child cannot also be the library's own.
        // and a row that reaches one is one users write in unit-file syntax.
        if (detail::reach_of(row.forked)) {
            EXPECT_FALSE(row.owned_by_library);
            EXPECT_TRUE(row.convert);
        }
    }
    EXPECT_EQ(detail::find_property("NoSuchProperty"), nullptr);
}

TEST(PropertyCatalog, EveryOtherPlaceAsksTheCatalogue) {
    for (const PropertyRow& row : property_catalog()) {
        SCOPED_TRACE(std::string(row.name));
        if (!row.convert) continue;
        Properties one{{std::string(row.name), std::string(row.example)}};
        // system_info's checks: on a machine that meets nothing, exactly the rows with a requirement are refused,
        // each naming its assignment.
        const SystemInfo meets_nothing{.systemd_version = 1, .cgroup_layout = CgroupLayout::legacy, .kernel = {1, 0}};
        if (row.requirement) {
            try {
                require_properties(one, meets_nothing);
                ADD_FAILURE() << "a property with a requirement passed on a machine that meets none";
            } catch (const Unsupported& e) {
                EXPECT_NE(std::string(e.what()).find(std::string(row.name) + "="), std::string::npos) << e.what();
            }
        } else {
            EXPECT_NO_THROW(require_properties(one, meets_nothing));
        }
        // The start methods' checks (this test runs as root, so no user-manager refusal adds to them): what the
        // library owns is refused for every method; fork takes exactly what reaches a forked child, and says so
        // through property_reach(); exec takes the rest.
        const bool reaches_forked = !row.owned_by_library && detail::reach_of(row.forked).has_value();
        EXPECT_EQ(property_reach(row.name).has_value(), reaches_forked);
        if (reaches_forked) {
            EXPECT_NO_THROW(detail::check_properties_for_start_method(one, StartMethod::fork));
        } else {
            EXPECT_THROW(detail::check_properties_for_start_method(one, StartMethod::fork), UnsupportedProperty);
        }
        if (row.owned_by_library) {
            EXPECT_THROW(detail::check_properties_for_start_method(one, StartMethod::exec), UnsupportedProperty);
        } else {
            EXPECT_NO_THROW(detail::check_properties_for_start_method(one, StartMethod::exec));
        }
        if (!row.reserved_by_command.empty()) {
            EXPECT_THROW(Command({"/bin/true"}).property(std::string(row.name), std::string(row.example)),
                         UnsupportedProperty);
        }
    }
}

// Each row's example in a unit of its own: the manager takes it, and each D-Bus property it became reads back.
TEST_F(PropertyCatalogTest, EveryRowsExampleIsTakenByTheManagerAndReadsBack) {
    const SystemInfo machine = info();
    int started = 0, refused_by_requirement = 0, failed_on_namespaces = 0;
    for (const PropertyRow& row : property_catalog()) {
        if (!row.convert) continue;
        SCOPED_TRACE(std::string(row.name));
        if (row.requirement && unmet_requirement(*row.requirement, machine)) {
            // The machine cannot apply it: a start is refused before anything is sent, naming the property.
            Properties one{{std::string(row.name), std::string(row.example)}};
            try {
                require_properties(one, machine);
                ADD_FAILURE() << "accepted although " << *unmet_requirement(*row.requirement, machine);
            } catch (const Unsupported& e) {
                EXPECT_NE(std::string(e.what()).find(std::string(row.name) + "="), std::string::npos) << e.what();
            }
            ++refused_by_requirement;
            continue;
        }
        const std::string stem = unique_unit_name("");
        const bool socket = row_is_of_a_socket(row);
        const std::string example = socket ? socket_example(row, stem) : std::string(row.example);
        Properties properties;
        std::vector<AuxiliaryUnit> aux;
        const std::string name = stem + (socket ? ".socket" : ".service");
        if (socket) {
            if (!row.name.starts_with("Listen")) properties.set("ListenStream", "@" + stem + "-for-name");
            aux.push_back({stem + ".service", Properties{{"ExecStart", "/bin/sleep infinity"}}});
        } else {
            if (row.name != "Type") properties.set("Type", "exec");
            if (row.name != "ExecStart") properties.set("ExecStart", "/bin/sleep infinity");
        }
        properties.set(std::string(row.name), example);
        std::vector<std::string> to_clean{name};
        if (socket) to_clean.push_back(stem + ".service");
        if (row.name == "Slice") to_clean.insert(to_clean.end(), {example, "sdfutures.slice"});
        UnitCleanup cleanup(manager(), std::move(to_clean));
        auto job = manager().start_transient_unit_async(name, properties, {}, "fail", aux);
        auto result = job.wait_result(std::chrono::seconds(20));
        ASSERT_TRUE(result) << "the start job did not end";
        Unit unit(bus(), name);
        if (*result != "done") {
            // Only a namespace this manager cannot make may fail the start (226/NAMESPACE; see the README), and the
            // library's decoding of a failed start names the property for it.
            auto status = unit.property_as<int32_t>(unit.type_interface(), "ExecMainStatus");
            EXPECT_EQ(status, 226) << "the start failed: " << *result;
            EXPECT_NE(detail::exit_status_cause(status, properties).property.find(std::string(row.name) + "="),
                      std::string::npos);
            ++failed_on_namespaces;
            std::cout << "  " << row.name << "=" << example << ": this manager fails the start with " << status
                      << "/NAMESPACE\n";
        } else {
            ++started;
        }
        for (const auto& sent : parse_property(row.name, example)) {
            const std::string& dbus_name = std::get<0>(sent);
            sdbus::Variant back;
            try {
                back = unit.property(unit.type_interface(), dbus_name);
            } catch (const std::exception&) {
                back = unit.property("org.freedesktop.systemd1.Unit", dbus_name);
            }
            if (dbus_name == "SystemCallFilter") {
                // "~@mount" reads back as the calls of the group, denied.
                std::string text = text_of(back);
                EXPECT_TRUE(text.starts_with("deny [")) << text;
                EXPECT_NE(text.find(",mount,"), std::string::npos) << text;
            } else {
                EXPECT_EQ(text_of(back), text_of(std::get<1>(sent))) << dbus_name;
            }
        }
    }
    std::cout << "  " << started << " rows started, " << failed_on_namespaces << " failed on a namespace, "
              << refused_by_requirement << " refused by a requirement this machine does not meet\n";
}

// --- What reaches a forked child, observed in the child ---------------------------------------------------------

// The value of a v1 controller's file for the calling process's cgroup, or of the unified hierarchy's.
std::string cgroup_file(const std::string& controller, const std::string& file) {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line)) {
        auto first = line.find(':'), second = line.find(':', first + 1);
        std::string controllers = line.substr(first + 1, second - first - 1);
        std::string path = line.substr(second + 1);
        std::stringstream list(controllers);
        std::string c;
        while (std::getline(list, c, ','))
            if (c == controller) {
                std::ifstream f("/sys/fs/cgroup/" + controller + path + "/" + file);
                std::string value;
                if (!(f >> value)) return "(no " + file + " in " + path + ")";
                return value;
            }
    }
    return "(no " + controller + " hierarchy)";
}

std::string rlimit_text(int resource) {
    rlimit r{};
    getrlimit(resource, &r);
    auto one = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("infinity") : std::to_string(v); };
    return one(r.rlim_cur) + ":" + one(r.rlim_max);
}

struct Observation {
    std::function<std::string()> in_child;  // runs in the forked child
    std::string expected;  // empty: what a child without the property sees is different
    std::string value;     // the value to observe, where the row's example does not suit (empty: the example)
};

// Per row that reaches a forked child: how to see it there, and what the row's example must show.
std::map<std::string, Observation, std::less<>> observations() {
    const group* nogroup = ::getgrnam("nogroup");
    const std::string nogroup_gid = nogroup ? std::to_string(nogroup->gr_gid) : "(no group nogroup here)";
    std::map<std::string, Observation, std::less<>> m;
    // cgroup: the kernel's own numbers for the child's cgroup (v1 controllers in the hybrid layout)
    m["CPUQuota"] = {[] { return cgroup_file("cpu", "cpu.cfs_quota_us"); }, "25000"};  // of a 100 ms period
    m["CPUWeight"] = {[] { return cgroup_file("cpu", "cpu.shares"); }, "2048"};        // 200 of 100 → 2 × 1024
    // Applies while the manager starts up only; afterwards the unit has the default weight.
    m["StartupCPUWeight"] = {[] { return cgroup_file("cpu", "cpu.shares"); }, "1024"};
    m["MemoryMax"] = {[] { return cgroup_file("memory", "memory.limit_in_bytes"); }, std::to_string(64 << 20)};
    m["TasksMax"] = {[] { return cgroup_file("pids", "pids.max"); }, "64"};
    // systemd maps IOWeight= onto the block scheduler's own scale (BFQ's here): it differs from the default.
    m["IOWeight"] = {[] { return cgroup_file("blkio", "blkio.bfq.weight"); }, {}};
    // credentials
    m["User"] = {[] { return std::to_string(getuid()) + "/" + std::to_string(geteuid()); }, "65534/65534"};
    m["Group"] = {[] { return std::to_string(getgid()) + "/" + std::to_string(getegid()); },
                  nogroup_gid + "/" + nogroup_gid};
    m["SupplementaryGroups"] = {[] {
        gid_t groups[64];
        int n = getgroups(64, groups);
        std::string out;
        for (int i = 0; i < n; ++i) out += std::to_string(groups[i]) + ",";
        return out;
    }, nogroup_gid + ","};
    // namespaces
    m["PrivateNetwork"] = {[] {
        std::ifstream in("/proc/net/dev");
        std::string line, names;
        while (std::getline(in, line))
            if (auto colon = line.find(':'); colon != std::string::npos) {
                auto start = line.find_first_not_of(' ');
                names += line.substr(start, colon - start) + ",";
            }
        return names;
    }, "lo,"};
    m["PrivateTmp"] = {[] {
        struct stat here{}, root_tmp{};
        ::stat("/tmp", &here);
        ::stat("/proc/1/root/tmp", &root_tmp);  // pid 1 of the child's pid namespace: the machine's init
        return std::string(here.st_ino != root_tmp.st_ino || here.st_dev != root_tmp.st_dev ? "private" : "shared");
    }, "private"};
    m["ProtectSystem"] = {[] { return std::string(::access("/usr", W_OK) == 0 ? "writable" : strerror(errno)); },
                          strerror(EROFS)};
    m["ProtectHome"] = {[] { return std::string(::access("/root", W_OK) == 0 ? "writable" : strerror(errno)); },
                        strerror(EROFS)};
    // library: copied from the unit's main process
    m["NoNewPrivileges"] = {[] { return std::to_string(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)); }, "1"};
    m["Nice"] = {[] { return std::to_string(getpriority(PRIO_PROCESS, 0)); }, "5"};
    m["Environment"] = {[] { return std::string(std::getenv("CATALOG") ? std::getenv("CATALOG") : "(unset)"); }, "1"};
    m["WorkingDirectory"] = {[] {
        char dir[256] = {};
        return std::string(getcwd(dir, sizeof dir) ? dir : "?");
    }, "/tmp"};
    m["UMask"] = {[] {
        mode_t old = umask(0);
        umask(old);
        return std::to_string(old);
    }, std::to_string(027)};
    m["LimitCPU"] = {[] { return rlimit_text(RLIMIT_CPU); }, "100:100"};
    m["LimitFSIZE"] = {[] { return rlimit_text(RLIMIT_FSIZE); }, "1073741824:1073741824"};
    // The address-space limits are observed at values a sanitizer's runtime lives under, not at the examples'
    // 4G and 1G: the child is a fork of this process, and ASan's maps 20 TiB of address space (14 TiB of it
    // private and writable, which RLIMIT_DATA counts), TSan's 124.5 TiB (19 TiB); under less it cannot start.
    m["LimitDATA"] = {[] { return rlimit_text(RLIMIT_DATA); }, "70368744177664:70368744177664", "64T"};
    m["LimitSTACK"] = {[] { return rlimit_text(RLIMIT_STACK); }, "8388608:8388608"};
    m["LimitCORE"] = {[] { return rlimit_text(RLIMIT_CORE); }, "0:0"};
    m["LimitRSS"] = {[] { return rlimit_text(RLIMIT_RSS); }, "1073741824:1073741824"};
    m["LimitNOFILE"] = {[] { return rlimit_text(RLIMIT_NOFILE); }, "100:200"};
    m["LimitAS"] = {[] { return rlimit_text(RLIMIT_AS); }, "139637976727552:139637976727552", "127T"};
    m["LimitNPROC"] = {[] { return rlimit_text(RLIMIT_NPROC); }, "1000:1000"};
    m["LimitMEMLOCK"] = {[] { return rlimit_text(RLIMIT_MEMLOCK); }, "8388608:8388608"};
    m["LimitLOCKS"] = {[] { return rlimit_text(RLIMIT_LOCKS); }, "100:100"};
    m["LimitSIGPENDING"] = {[] { return rlimit_text(RLIMIT_SIGPENDING); }, "100:100"};
    m["LimitMSGQUEUE"] = {[] { return rlimit_text(RLIMIT_MSGQUEUE); }, "819200:819200"};
    m["LimitNICE"] = {[] { return rlimit_text(RLIMIT_NICE); }, "0:0"};
    m["LimitRTPRIO"] = {[] { return rlimit_text(RLIMIT_RTPRIO); }, "0:0"};
    m["LimitRTTIME"] = {[] { return rlimit_text(RLIMIT_RTTIME); }, "1000000:1000000"};
    // unit: the child is in the unit the property acts on (its value reads back, above)
    auto unit_of_child = [] {
        std::ifstream in("/proc/self/cgroup");
        std::string line;
        while (std::getline(in, line))
            if (line.find(":name=systemd:") != std::string::npos || line.starts_with("0::")) return line;
        return std::string("?");
    };
    m["Slice"] = {[unit_of_child] {
        return std::string(unit_of_child().find("/sdfutures-catalog.slice/") != std::string::npos ? "in the slice"
                                                                                                  : unit_of_child());
    }, "in the slice"};
    for (const char* name : {"Delegate", "Description", "KillMode", "KillSignal", "CollectMode", "RuntimeMaxSec",
                             "TimeoutStopSec"})
        m[name] = {[unit_of_child] {
            return std::string(unit_of_child().find("sdfutures-process-") != std::string::npos ? "in its unit"
                                                                                               : unit_of_child());
        }, "in its unit"};
    return m;
}

TEST_F(PropertyCatalogTest, WhatARowSaysReachesAForkedChildIsSeenThere) {
    auto observed = observations();
    UnitCleanup slices(manager(), std::vector<std::string>{"sdfutures-catalog.slice", "sdfutures.slice"});  // Slice='s example makes them
    int seen = 0;
    for (const PropertyRow& row : property_catalog()) {
        if (row.owned_by_library || !detail::reach_of(row.forked)) continue;
        SCOPED_TRACE(std::string(row.name));
        if (row.requirement && unmet_requirement(*row.requirement, info())) continue;  // refused, checked above
        auto it = observed.find(row.name);
        ASSERT_NE(it, observed.end()) << "no observation for a row that says it reaches a forked child";
        const std::string value = it->second.value.empty() ? std::string(row.example) : it->second.value;
        Properties one{{std::string(row.name), value}};
        try {
            std::string in_child = run(one, it->second.in_child);
            if (it->second.expected.empty()) EXPECT_NE(in_child, run(Properties{}, it->second.in_child));
            else EXPECT_EQ(in_child, it->second.expected);
            ++seen;
        } catch (const Error& e) {
            // A namespace this manager cannot make: the start fails naming the property (226/NAMESPACE).
            const std::string what = e.what();
            EXPECT_EQ(row.forked, Forked::namespaces) << what;
            EXPECT_NE(what.find("226"), std::string::npos) << what;
            EXPECT_NE(what.find(std::string(row.name)), std::string::npos) << what;
            std::cout << "  " << row.name << "=" << value << ": " << what << "\n";
        }
    }
    EXPECT_GT(seen, 40);
}

}  // namespace
}  // namespace sdfutures
