#pragma once
// A temporary directory and the two FIFOs notify_helper (tests/helpers/notify_helper.cpp) steps through, shared by
// the daemon and Command service tests.

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace sdfutures::testing {

// A directory of its own, removed with everything in it at the end.
class TempDir {
public:
    TempDir() {
        char path[] = "/tmp/sdfutures-test-XXXXXX";
        if (!::mkdtemp(path)) throw std::runtime_error("mkdtemp failed");
        path_ = path;
    }
    ~TempDir() { std::filesystem::remove_all(path_); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// The FIFOs the helper steps through (see notify_helper.cpp). Both are held open read-write here, so that the
// helper's opens never block and a byte written to `go` before the helper reads it is kept.
class Fifos {
public:
    Fifos() {
        for (const char* name : {"/started", "/go"})
            if (::mkfifo((dir_.path() + name).c_str(), 0600) != 0) throw std::runtime_error("mkfifo failed");
        started_ = ::open((dir_.path() + "/started").c_str(), O_RDWR | O_CLOEXEC);
        go_ = ::open((dir_.path() + "/go").c_str(), O_RDWR | O_CLOEXEC);
    }
    ~Fifos() {
        ::close(started_);
        ::close(go_);
    }
    Fifos(const Fifos&) = delete;
    Fifos& operator=(const Fifos&) = delete;
    const std::string& dir() const { return dir_.path(); }

    // The helper's next step. Bounded, so that a helper that never runs fails the test rather than hanging it.
    bool wait_started() {
        pollfd p{started_, POLLIN, 0};
        char c = 0;
        return ::poll(&p, 1, 60'000) == 1 && ::read(started_, &c, 1) == 1;
    }
    void go() { ASSERT_EQ(::write(go_, "x", 1), 1); }

private:
    TempDir dir_;
    int started_ = -1, go_ = -1;
};

}  // namespace sdfutures::testing
