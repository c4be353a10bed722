// Unit-file syntax → systemd's D-Bus names and types, and the rejects of bad values.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <limits>

#include "sdfutures/properties.hpp"
#include "sdfutures/error.hpp"

using sdfutures::DbusProperty;
using sdfutures::parse_property;
using sdfutures::PropertyError;

namespace {

constexpr uint64_t kInf = std::numeric_limits<uint64_t>::max();

template <class T>
void expect_single(std::string_view name, std::string_view value, const std::string& dbus_name, T expected) {
    SCOPED_TRACE(std::string(name) + "=" + std::string(value));
    auto out = parse_property(name, value);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].get<0>(), dbus_name);
    EXPECT_EQ(out[0].get<1>().get<T>(), expected);
}

struct Row {
    const char* name;
    const char* value;
    const char* dbus_name;
    uint64_t expected;
};

TEST(Properties, Uint64ConversionTable) {
    const Row rows[] = {
        {"CPUQuota", "25%", "CPUQuotaPerSecUSec", 250000},
        {"CPUQuota", "150%", "CPUQuotaPerSecUSec", 1500000},
        {"CPUQuota", "12.5%", "CPUQuotaPerSecUSec", 125000},
        {"CPUWeight", "100", "CPUWeight", 100},
        {"IOWeight", "10000", "IOWeight", 10000},
        {"MemoryMax", "512M", "MemoryMax", 512ull << 20},
        {"MemoryMax", "1G", "MemoryMax", 1ull << 30},
        {"MemoryMax", "1.5K", "MemoryMax", 1536},
        {"MemoryMax", "4096", "MemoryMax", 4096},
        {"MemoryMax", "2T", "MemoryMax", 2ull << 40},
        {"MemoryMax", "infinity", "MemoryMax", kInf},
        {"MemoryHigh", "64M", "MemoryHigh", 64ull << 20},
        {"MemorySwapMax", "0", "MemorySwapMax", 0},
        {"TasksMax", "64", "TasksMax", 64},
        {"TasksMax", "infinity", "TasksMax", kInf},
        {"RuntimeMaxSec", "5s", "RuntimeMaxUSec", 5'000'000},
        {"RuntimeMaxSec", "90", "RuntimeMaxUSec", 90'000'000},
        {"RuntimeMaxSec", "1min 30s", "RuntimeMaxUSec", 90'000'000},
        {"RuntimeMaxSec", "2h", "RuntimeMaxUSec", 7'200'000'000},
        {"RuntimeMaxSec", "infinity", "RuntimeMaxUSec", kInf},
        {"TimeoutStopSec", "500ms", "TimeoutStopUSec", 500'000},
        {"TimeoutStopSec", "250us", "TimeoutStopUSec", 250},
    };
    for (auto& r : rows) expect_single<uint64_t>(r.name, r.value, r.dbus_name, r.expected);
}

TEST(Properties, OtherTypes) {
    expect_single<std::string>("User", "nobody", "User", "nobody");
    expect_single<std::string>("Group", "nogroup", "Group", "nogroup");
    expect_single<bool>("DynamicUser", "yes", "DynamicUser", true);
    expect_single<bool>("PrivateNetwork", "true", "PrivateNetwork", true);
    expect_single<bool>("PrivateTmp", "off", "PrivateTmp", false);
    expect_single<bool>("NoNewPrivileges", "1", "NoNewPrivileges", true);
    expect_single<bool>("Delegate", "yes", "Delegate", true);
    expect_single<int32_t>("Nice", "10", "Nice", 10);
    expect_single<int32_t>("Nice", "-20", "Nice", -20);
    expect_single<int32_t>("KillSignal", "SIGKILL", "KillSignal", 9);
    expect_single<int32_t>("KillSignal", "INT", "KillSignal", 2);
    expect_single<std::string>("ProtectSystem", "strict", "ProtectSystem", "strict");
    expect_single<std::string>("ProtectSystem", "true", "ProtectSystem", "yes");
    expect_single<std::string>("ProtectHome", "read-only", "ProtectHome", "read-only");
    expect_single<std::string>("KillMode", "mixed", "KillMode", "mixed");
    expect_single<std::string>("CollectMode", "inactive-or-failed", "CollectMode", "inactive-or-failed");
    expect_single<std::string>("Slice", "work.slice", "Slice", "work.slice");
    expect_single<std::string>("WorkingDirectory", "/tmp", "WorkingDirectory", "/tmp");
    expect_single<std::string>("Description", "a b c", "Description", "a b c");
    expect_single<uint32_t>("UMask", "0027", "UMask", 027);
    expect_single<uint32_t>("MemoryMax", "50%", "MemoryMaxScale", std::numeric_limits<uint32_t>::max() / 2 + 1);
    expect_single<std::vector<std::string>>("Environment", "FOO=bar \"B=x y\"", "Environment",
                                            std::vector<std::string>{"FOO=bar", "B=x y"});
    expect_single<std::vector<std::string>>("SupplementaryGroups", "adm users", "SupplementaryGroups",
                                            std::vector<std::string>{"adm", "users"});
    expect_single<std::vector<uint8_t>>("AllowedCPUs", "0-1,3", "AllowedCPUs", std::vector<uint8_t>{0b1011});
    expect_single<std::vector<uint8_t>>("AllowedCPUs", "9", "AllowedCPUs", std::vector<uint8_t>{0, 0b10});
}

TEST(Properties, TheServiceSide) {
    expect_single<std::string>("NotifyAccess", "main", "NotifyAccess", "main");
    expect_single<uint64_t>("WatchdogSec", "1.5s", "WatchdogUSec", 1500000);
    expect_single<std::string>("FileDescriptorName", "greeting", "FileDescriptorName", "greeting");
    using Listen = std::vector<sdbus::Struct<std::string, std::string>>;
    expect_single<Listen>("ListenStream", "/run/x.sock", "Listen", Listen{{"Stream", "/run/x.sock"}});
    expect_single<Listen>("ListenDatagram", "@x", "Listen", Listen{{"Datagram", "@x"}});
    expect_single<Listen>("ListenSequentialPacket", "/run/y", "Listen", Listen{{"SequentialPacket", "/run/y"}});
    for (const char* bad : {"", "a:b", "with space", "caf\xc3\xa9"})
        EXPECT_THROW(parse_property("FileDescriptorName", bad), PropertyError) << bad;
    EXPECT_THROW(parse_property("NotifyAccess", "everyone"), PropertyError);
    EXPECT_THROW(parse_property("ListenStream", " "), PropertyError);
    EXPECT_THROW(parse_property("WatchdogSec", "soon"), PropertyError);
}

TEST(Properties, RlimitsCarrySoftAndHard) {
    auto out = parse_property("LimitNOFILE", "1024:4096");
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].get<0>(), "LimitNOFILE");
    EXPECT_EQ(out[0].get<1>().get<uint64_t>(), 4096u);
    EXPECT_EQ(out[1].get<0>(), "LimitNOFILESoft");
    EXPECT_EQ(out[1].get<1>().get<uint64_t>(), 1024u);
    auto single = parse_property("LimitCORE", "infinity");
    EXPECT_EQ(single[0].get<1>().get<uint64_t>(), kInf);
    EXPECT_EQ(single[1].get<1>().get<uint64_t>(), kInf);
}

TEST(Properties, IpAddressLists) {
    using Prefix = sdbus::Struct<int32_t, std::vector<uint8_t>, uint32_t>;
    auto out = parse_property("IPAddressDeny", "10.0.0.0/8 ::1 localhost");
    auto list = out.at(0).get<1>().get<std::vector<Prefix>>();
    ASSERT_EQ(list.size(), 4u);
    EXPECT_EQ(list[0].get<0>(), AF_INET);
    EXPECT_EQ(list[0].get<1>(), (std::vector<uint8_t>{10, 0, 0, 0}));
    EXPECT_EQ(list[0].get<2>(), 8u);
    EXPECT_EQ(list[1].get<0>(), AF_INET6);
    EXPECT_EQ(list[1].get<2>(), 128u);
    EXPECT_EQ(list[2].get<1>(), (std::vector<uint8_t>{127, 0, 0, 0}));
    auto any = parse_property("IPAddressAllow", "any").at(0).get<1>().get<std::vector<Prefix>>();
    EXPECT_EQ(any.size(), 2u);
}

TEST(Properties, ExecStartCarriesArgv) {
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    auto out = parse_property("ExecStart", "-/bin/sh -c 'exit 3'");
    auto commands = out.at(0).get<1>().get<std::vector<Exec>>();
    ASSERT_EQ(commands.size(), 1u);
    EXPECT_EQ(commands[0].get<0>(), "/bin/sh");
    EXPECT_EQ(commands[0].get<1>(), (std::vector<std::string>{"/bin/sh", "-c", "exit 3"}));
    EXPECT_TRUE(commands[0].get<2>());
}

TEST(Properties, BadValuesNameThePropertyAndTheValue) {
    const std::pair<const char*, const char*> bad[] = {
        {"CPUQuota", "25"},       {"CPUQuota", "-5%"},      {"CPUQuota", "abc%"},     {"CPUQuota", "0%"},
        {"MemoryMax", "lots"},    {"MemoryMax", "12Q"},     {"MemoryMax", "-1"},      {"MemoryMax", "150%"},
        {"MemoryMax", "99999999999E"},
        {"TasksMax", "0"},        {"CPUWeight", "0"},       {"CPUWeight", "10001"},   {"Nice", "20"},
        {"Nice", "x"},            {"PrivateNetwork", "maybe"}, {"RuntimeMaxSec", "5 parsecs"},
        {"RuntimeMaxSec", ""},    {"KillSignal", "SIGNOPE"}, {"KillMode", "gently"},  {"Environment", "NOEQUALS"},
        {"Environment", "1X=y"},  {"Environment", "\"unbalanced"}, {"User", ""},      {"User", "a b"},
        {"WorkingDirectory", "relative"}, {"Slice", "work"}, {"UMask", "0999"},       {"AllowedCPUs", "3-1"},
        {"IPAddressDeny", "300.1.1.1"}, {"IPAddressDeny", "10.0.0.0/33"}, {"ProtectSystem", "sometimes"},
        {"LimitNOFILE", "4096:1024"}, {"ExecStart", "relative/path"},
    };
    for (auto& [name, value] : bad) {
        SCOPED_TRACE(std::string(name) + "=" + value);
        try {
            parse_property(name, value);
            ADD_FAILURE() << "accepted";
        } catch (const PropertyError& e) {
            EXPECT_EQ(e.property(), name);
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
        }
    }
}

// Found by the property parser fuzzer: sdbus-c++'s own error escaped for invalid UTF-8, and a NUL cut the
// value short silently.
TEST(Properties, TextThatDbusCannotCarryIsAPropertyError) {
    for (std::string value : {std::string("\xff"), std::string("ab\0c", 4), std::string("\xc3"), std::string("\xed\xa0\x80"),
                              std::string("\xef\xbf\xbf"), std::string("\xef\xb7\x90")}) {
        EXPECT_THROW(parse_property("Description", value), PropertyError);
        EXPECT_THROW(parse_property("Environment", "A=" + value), PropertyError);
    }
    EXPECT_THROW(parse_property(std::string("Descr\xffiption"), "x"), PropertyError);
    EXPECT_NO_THROW(parse_property("Description", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
}

TEST(Properties, UnknownNamesPointToTheTypedEscapeHatch) {
    try {
        parse_property("CPUQuotaPeriodSec", "10ms");
        FAIL() << "accepted";
    } catch (const sdfutures::UnsupportedProperty& e) {
        EXPECT_EQ(e.property(), "CPUQuotaPeriodSec");
        EXPECT_NE(std::string(e.what()).find("set_typed"), std::string::npos);
    }
}

TEST(Properties, ContainerChecksAtAssignmentAndKeepsOrder) {
    EXPECT_THROW((sdfutures::Properties{{"MemoryMax", "huge"}}), PropertyError);
    sdfutures::Properties p{{"CPUQuota", "25%"}, {"User", "nobody"}};
    p.set_typed("CPUQuotaPeriodUSec", sdbus::Variant(uint64_t{10000}));
    auto d = p.to_dbus();
    ASSERT_EQ(d.size(), 3u);
    EXPECT_EQ(d[0].get<0>(), "CPUQuotaPerSecUSec");
    EXPECT_EQ(d[1].get<0>(), "User");
    EXPECT_EQ(d[2].get<0>(), "CPUQuotaPeriodUSec");
    EXPECT_EQ(d[2].get<1>().get<uint64_t>(), 10000u);
    EXPECT_TRUE(p.contains("User"));
    EXPECT_EQ(p.text_of("CPUQuota"), "25%");
    EXPECT_FALSE(p.text_of("MemoryMax"));
}

}  // namespace
