#include "sdfutures/detail/huge_pages.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include "sys.hpp"

namespace sdfutures::detail {

void advise_huge_pages(void* data, std::size_t size) noexcept {
    if (data == nullptr || size < huge_page_advice_bytes) return;
    // madvise(2) takes whole pages: only those inside the buffer are advised, never a neighbour's bytes.
    static const auto advice_page_bytes = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto start = reinterpret_cast<std::uintptr_t>(data);
    const std::uintptr_t begin = (start + advice_page_bytes - 1) & ~(advice_page_bytes - 1);
    const std::uintptr_t end = (start + size) & ~(advice_page_bytes - 1);
    // The result is ignored on purpose: EINVAL (no THP in this kernel) or EAGAIN leave ordinary pages, as before.
    if (end > begin) (void)sys::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace sdfutures::detail
