// Untrusted input parsed by a pool of workers that systemd itself confines (StartMethod::exec): a dynamic user,
// no network, no devices, a system-call filter, no writable+executable memory, no capabilities, a memory limit.
// A parser bug can crash a worker (only its own task fails) but cannot read root's files, phone home, or find
// anything of the owner's in memory: the workers are forks of a fresh execution of this program, not of it.
//
//     sudo scripts/with-systemd build/examples/parse_as_nobody_pool
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>

#include "sdfutures/sdfutures.hpp"

namespace {

struct Parsed {
    std::map<std::string, std::string> fields;
    uid_t parsed_by = 0;
    bool could_read_shadow = false;
    bool had_network = false;
    MSGPACK_DEFINE(fields, parsed_by, could_read_shadow, had_network);
};

// "key=value;key=value" — and a deliberately fragile branch standing for a real parser's memory bug.
Parsed parse(const std::string& input) {
    if (input.find("\x01") != std::string::npos) std::raise(SIGSEGV);
    Parsed out;
    size_t start = 0;
    while (start < input.size()) {
        size_t end = input.find(';', start);
        std::string item = input.substr(start, end - start);
        size_t eq = item.find('=');
        if (eq == std::string::npos) throw std::invalid_argument("no '=' in \"" + item + "\"");
        out.fields[item.substr(0, eq)] = item.substr(eq + 1);
        if (end == std::string::npos) break;
        start = end + 1;
    }
    out.parsed_by = getuid();
    out.could_read_shadow = ::open("/etc/shadow", O_RDONLY) >= 0;
    int s = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in dns{};
    dns.sin_family = AF_INET;
    dns.sin_port = htons(53);
    inet_pton(AF_INET, "192.0.2.1", &dns.sin_addr);  // TEST-NET-1: never routed; only the attempt matters
    out.had_network = ::connect(s, reinterpret_cast<sockaddr*>(&dns), sizeof dns) == 0;
    ::close(s);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    // First: in the copy of this program that systemd executes for the pool, this call serves the pool.
    sdfutures::init(argc, argv);
    try {
        // Untrusted input: one task per worker (no task sent ahead to a worker a parse may have taken over, nothing
        // it leaves behind meets the next input), a bound on each parse, and systemd's whole sandbox.
        sdfutures::TransientUnitPoolExecutor pool({{"DynamicUser", "yes"},
                                                   {"PrivateNetwork", "yes"},
                                                   {"PrivateDevices", "yes"},
                                                   {"SystemCallFilter", "@system-service"},
                                                   {"MemoryDenyWriteExecute", "yes"},
                                                   {"CapabilityBoundingSet", ""},
                                                   {"MemoryMax", "64M"}},
                                                  {.max_workers = 2,
                                                   .max_tasks_per_child = 1,
                                                   .task_timeout = std::chrono::seconds(10),
                                                   .start_method = sdfutures::StartMethod::exec});
        std::cout << "pool unit " << pool.unit().name() << "\n";
        const std::vector<std::string> inputs = {"name=alice;role=admin", "broken", std::string("evil=\x01", 6),
                                                 "name=bob"};
        std::vector<std::future<Parsed>> results;
        for (auto& input : inputs) results.push_back(pool.submit(&parse, input));
        for (size_t i = 0; i < inputs.size(); ++i) {
            std::cout << "input " << i << ": ";
            try {
                Parsed p = results[i].get();
                std::cout << p.fields.size() << " field(s), parsed by uid " << p.parsed_by
                          << ", /etc/shadow " << (p.could_read_shadow ? "READABLE" : "unreadable")
                          << ", network " << (p.had_network ? "REACHABLE" : "unreachable") << "\n";
            } catch (const std::invalid_argument& e) {
                std::cout << "rejected: " << e.what() << "\n";
            } catch (const sdfutures::ProcessDied& e) {
                std::cout << "crashed the parser: " << e.what() << "\n";
            }
        }
        std::cout << "the pool still serves: " << pool.submit(&parse, std::string("after=crash")).get().fields.size()
                  << " field(s)\n";
    } catch (const sdfutures::Error& e) {
        std::cerr << "parse_as_nobody_pool: " << e.what() << "\n";
        return 1;
    }
}
