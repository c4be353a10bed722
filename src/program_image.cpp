#include "program_image.hpp"

#include <dlfcn.h>
#include <link.h>
#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <system_error>
#include <cstdio>
#include <vector>

#include "fd_util.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::detail {
namespace {

struct Segment {
    std::uintptr_t begin, end;
};

// The main executable: the first object dl_iterate_phdr reports. Its load bias and the address ranges of its
// loadable segments.
struct MainImage {
    std::uintptr_t bias = 0;
    std::vector<Segment> segments;
};

const MainImage& main_image() {
    static const MainImage image = [] {
        MainImage found;
        ::dl_iterate_phdr(
            [](dl_phdr_info* info, size_t, void* out) {
                auto* image = static_cast<MainImage*>(out);
                image->bias = info->dlpi_addr;
                for (int i = 0; i < info->dlpi_phnum; ++i) {
                    const auto& ph = info->dlpi_phdr[i];
                    if (ph.p_type != PT_LOAD) continue;
                    std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
                    image->segments.push_back({begin, begin + ph.p_memsz});
                }
                return 1;  // only the first object
            },
            &found);
        return found;
    }();
    return image;
}

}  // namespace

ImageIdentity identity_of(int fd, const char* what) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw SystemError("fstat", errno, std::string("of ") + what);
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

std::string to_text(const ImageIdentity& identity) {
    char text[128];
    std::snprintf(text, sizeof text, "%" PRIu64 ":%" PRIu64 ":%" PRIu64 ":%" PRId64, identity.device, identity.inode,
                  identity.size, identity.modified_ns);
    return text;
}

ImageIdentity identity_from_text(const std::string& text) {
    ImageIdentity identity;
    const char* at = text.data();
    const char* const end = text.data() + text.size();
    auto field = [&](auto& value, bool last) {
        auto [next, ec] = std::from_chars(at, end, value);
        if (ec != std::errc() || next == at || (last ? next != end : (next == end || *next != ':')))
            throw Error("malformed executable identity '" + text + "'");
        at = last ? next : next + 1;
    };
    field(identity.device, false);
    field(identity.inode, false);
    field(identity.size, false);
    field(identity.modified_ns, true);
    return identity;
}

std::uintptr_t image_offset(std::uintptr_t address, const char* what) {
    const MainImage& image = main_image();
    for (const Segment& s : image.segments)
        if (address >= s.begin && address < s.end) return address - image.bias;
    Dl_info info{};
    std::string where = "outside any loaded object";
    if (::dladdr(reinterpret_cast<void*>(address), &info) != 0 && info.dli_fname)
        where = std::string("in ") + info.dli_fname;
    throw StateError(std::string("StartMethod::exec runs only code of the program's own executable, and the ") + what +
                     " is " + where +
                     " (a shared library or code from dlopen() is not where it was in a process systemd executed); "
                     "link it into the program, or use StartMethod::forkserver or fork");
}

std::uintptr_t image_address(std::uintptr_t offset) noexcept { return main_image().bias + offset; }

}  // namespace sdfutures::detail
