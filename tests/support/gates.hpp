#pragma once
// Gates: tasks that run until the test lets them end, whatever worker they run in. A task blocks opening a FIFO
// (wait_for_gate) until the test opens it for writing (Gates::open); nothing is timed.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace sdfutures::testing {

// Returns `value` once the test opened `fifo`.
inline int wait_for_gate(std::string fifo, int value) {
    int fd = ::open(fifo.c_str(), O_RDONLY);
    char byte = 0;
    if (fd >= 0) {
        [[maybe_unused]] ssize_t n = ::read(fd, &byte, 1);
        ::close(fd);
    }
    return value;
}

// n FIFOs in a directory of their own, removed with it.
class Gates {
public:
    explicit Gates(std::size_t n) {
        char dir[] = "/tmp/sdfutures-gates-XXXXXX";
        dir_ = ::mkdtemp(dir);
        for (std::size_t i = 0; i < n; ++i) {
            paths_.push_back(dir_ + "/" + std::to_string(i));
            ::mkfifo(paths_.back().c_str(), 0600);
        }
    }
    ~Gates() {
        for (auto& p : paths_) ::unlink(p.c_str());
        ::rmdir(dir_.c_str());
    }
    Gates(const Gates&) = delete;
    Gates& operator=(const Gates&) = delete;
    const std::string& path(std::size_t i) const { return paths_[i]; }
    // Lets task i end: blocks until it opened its end, which a running task does at once.
    void open(std::size_t i) const {
        int fd = ::open(paths_[i].c_str(), O_WRONLY);
        ASSERT_GE(fd, 0) << paths_[i];
        ASSERT_EQ(::write(fd, "x", 1), 1);
        ::close(fd);
    }

private:
    std::string dir_;
    std::vector<std::string> paths_;
};

}  // namespace sdfutures::testing
