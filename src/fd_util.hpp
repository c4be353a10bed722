#pragma once
// Small descriptor helpers shared by the process and pool implementations. Private to the library.

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <optional>
#include <span>
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

// Sends `data` and the descriptors in `fds` (at most kMaxPassedFds) over a unix socket.
inline constexpr std::size_t kMaxPassedFds = 3;
bool send_with_fds(int socket, const void* data, size_t size, std::span<const int> fds = {}) noexcept;
// Receives one message into `data`; the descriptors that came with it fill `fds` in order (owned, close-on-exec),
// and any beyond fds.size() are closed. Returns the byte count (0 at end of stream, -1 on error). `dropped`, when
// given, tells whether the kernel dropped descriptors sent with the message (MSG_CTRUNC), which it does when
// this process cannot take them: at its descriptor limit, say.
ssize_t receive_with_fds(int socket, void* data, size_t size, std::span<Fd> fds = {}, bool* dropped = nullptr) noexcept;

// write(2) to a pipe whose reader may be gone, without SIGPIPE killing this process.
ssize_t write_without_sigpipe(int fd, const char* data, size_t size) noexcept;

// read(2) until end of file, through interruptions (EINTR). Returns what was read, or nullopt on any other error
// (errno says which) and on more than `max_bytes` (errno EFBIG): each caller bounds what it takes, and reports a
// longer input as it reports a failed read.
std::optional<std::string> read_to_end(int fd, std::size_t max_bytes);

// write(2) until done or an error other than EINTR; false on error.
bool write_all(int fd, const void* data, size_t size) noexcept;

// writev(2) of all of `parts` (which it uses up), through interruptions (EINTR), a full non-blocking descriptor
// (EAGAIN: waits for room) and short writes; false on any other error. For a payload written from several buffers
// (a reply's head and the result it keeps by reference) without joining them first.
bool writev_all(int fd, std::span<iovec> parts) noexcept;

}  // namespace sdfutures::detail
