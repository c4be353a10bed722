#pragma once
// The program's own executable image, as StartMethod::exec needs it: the exec'd fork server is the same file
// loaded at another address (ASLR), so a function travels as its offset from the image's load address, and
// only functions of that image can travel at all. Private to the library.

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace sdfutures::detail {

// What identifies the file an image was loaded from. The owner hands systemd a descriptor of its own
// /proc/self/exe, so the exec'd file is the owner's very inode even if the path was replaced since; the exec'd
// server still compares what it runs with this before it serves.
struct ImageIdentity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t modified_ns = 0;
    friend bool operator==(const ImageIdentity&, const ImageIdentity&) = default;
};

// Of the file open on `fd`; throws Error naming what failed.
ImageIdentity identity_of(int fd, const char* what);
std::string to_text(const ImageIdentity& identity);
// Throws Error for text that to_text did not write.
ImageIdentity identity_from_text(const std::string& text);

// `address`'s offset in the main executable's image. Throws StateError naming `what` and the object that holds
// it when it is not code of the program's executable (a shared library, code from dlopen()): such code may be
// mapped elsewhere or not at all in a process systemd executed.
std::uintptr_t image_offset(std::uintptr_t address, const char* what);

// The address of `offset` in this process's main executable image.
std::uintptr_t image_address(std::uintptr_t offset) noexcept;

}  // namespace sdfutures::detail
