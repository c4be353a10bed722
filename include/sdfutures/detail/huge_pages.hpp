#pragma once
// Advice for the large buffers a reply or a task's arguments are received into or decoded into.
//
// Why: fresh anonymous memory faults in one 4 KiB page at a time, and on machines whose transparent huge pages are
// set to "madvise" (a common default) that is all it ever gets. Receiving 64 MiB into such memory costs four to five
// times what it costs into memory advised MADV_HUGEPAGE (2 MiB faults): the page faults, not the copy, are the
// price of a large result. The advice changes nothing else: the memory is used as before, and where the kernel has
// no huge pages (or THP is "never") it is ignored.

#include <cstddef>

namespace sdfutures::detail {

// Buffers smaller than this are not advised: they are mostly served from the heap, and a few 4 KiB faults cost
// less than splitting a mapping for the advice.
inline constexpr std::size_t huge_page_advice_bytes = 4u << 20;

// Advises MADV_HUGEPAGE over the whole pages of [data, data + size) when size >= huge_page_advice_bytes. Call it on
// memory just reserved, before it is written: the advice only shapes the faults still to come. Never fails (advice
// the kernel refuses is no worse than no advice).
void advise_huge_pages(void* data, std::size_t size) noexcept;

}  // namespace sdfutures::detail
