#pragma once
// Small descriptor helpers shared by the process and pool implementations. Private to the library.

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

namespace sdfutures::detail {

// An owned file descriptor.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~Fd() { reset(); }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    explicit operator bool() const noexcept { return fd_ >= 0; }

private:
    int fd_ = -1;
};

// Sends `data` and, optionally, one descriptor over a unix socket.
bool send_with_fd(int socket, const void* data, size_t size, int fd) noexcept;
// Receives one message and at most one descriptor; returns the byte count (0 at end of stream, -1 on error).
ssize_t receive_with_fd(int socket, void* data, size_t size, int& fd) noexcept;

// write(2) until done or an error other than EINTR; false on error.
bool write_all(int fd, const void* data, size_t size) noexcept;

}  // namespace sdfutures::detail
