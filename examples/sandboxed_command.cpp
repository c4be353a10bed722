// Identify untrusted bytes with a real program, in a sandbox: the program runs as a throw-away user with no
// network, a read-only file system and a system call filter, reads the bytes on stdin, and its verdict comes
// back captured, with its exit status and CPU time.
//
//   sandboxed_command [FILE]      (the bytes of FILE, or a built-in sample; "-" reads this program's stdin)
//
// Needs a systemd manager running as root (DynamicUser=): the system manager, or scripts/with-systemd,
// whose private manager runs as root.
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "sdfutures/sdfutures.hpp"

namespace {

std::string read_input(int argc, char** argv) {
    if (argc < 2) {
        // A PNG signature and header chunk: enough for file(1) to name the format and the image size.
        static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                            0, 0, 0, 32, 0, 0, 0, 16, 8, 6, 0, 0, 0};
        return std::string(reinterpret_cast<const char*>(png), sizeof png);
    }
    std::string name = argv[1];
    if (name == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
    std::ifstream in(name, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
    using namespace std::chrono_literals;
    std::string input;
    try {
        input = read_input(argc, argv);
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 2;
    }

    // file(1) when installed (Debian: the `file` package); otherwise a shell pipeline that still shows what
    // the bytes begin with ($0 is their count, passed as an argument so the bytes are read only once).
    bool have_file = ::access("/usr/bin/file", X_OK) == 0;
    std::vector<std::string> argv_of_tool =
        have_file ? std::vector<std::string>{"/usr/bin/file", "--brief", "-"}
                  : std::vector<std::string>{"/bin/sh", "-c", "echo \"$0 bytes, starting:\"; head -c 16 | od -A n -t x1",
                                             std::to_string(input.size())};

    sdfutures::Command command(argv_of_tool);
    command.property("DynamicUser", "yes")
        .property("PrivateNetwork", "yes")
        .property("ProtectSystem", "strict")
        .property("SystemCallFilter", "@system-service")
        .property("NoNewPrivileges", "yes")
        .property("MemoryMax", "64M")
        .stdin_from(input)
        .capture_stdout(1 << 20)
        .capture_stderr(1 << 20);

    sdfutures::CommandResult result;
    try {
        result = command.run(10s);
    } catch (const sdfutures::Unsupported& e) {
        std::cerr << "this sandbox needs a systemd manager running as root:\n  " << e.what() << "\n";
        return 2;
    } catch (const sdfutures::CommandStartFailed& e) {
        std::cerr << "systemd refused to start the sandboxed program (a container may forbid the namespaces or the "
                     "seccomp filter the sandbox needs):\n  "
                  << e.what() << "\n";
        return 2;
    } catch (const sdfutures::BusError& e) {
        std::cerr << "no systemd manager reachable (run this under scripts/with-systemd): " << e.what() << "\n";
        return 2;
    } catch (const sdfutures::Error& e) {
        std::cerr << e.what() << "\n";
        return 2;
    }

    std::cout << (have_file ? "file(1) says: " : "sh says: ") << result.captured_stdout;
    if (!result.captured_stderr.empty()) std::cout << "stderr: " << result.captured_stderr;
    std::cout << "status: " << result.status_text() << " (unit " << result.unit << ", Result=" << result.unit_result
              << ")\n";
    if (result.cpu_time)
        std::cout << "CPU time: " << std::chrono::duration<double, std::milli>(*result.cpu_time).count() << " ms\n";
    else
        std::cout << "CPU time: not recorded by this manager (no CPU accounting here)\n";
    if (result.run_time)
        std::cout << "run time: " << std::chrono::duration<double, std::milli>(*result.run_time).count() << " ms\n";
    if (result.memory_peak) std::cout << "memory peak: " << *result.memory_peak << " bytes\n";
    return result.success() ? 0 : 1;
}
