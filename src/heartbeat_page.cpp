#include "heartbeat_page.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <chrono>
#include <utility>

#include "sdfutures/error.hpp"
#include "sdfutures/this_task.hpp"

namespace sdfutures {
namespace detail {
namespace {

constexpr int kRequiredSeals = F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;

// Set once in a worker before its first task, read by heartbeat() on any thread of the task: an atomic so that a
// task's threads (and the benchmark, which sets it itself) read it without a data race; relaxed, since the page
// it points at is mapped before any task code runs.
std::atomic<HeartbeatStamp*> heartbeat_stamp{nullptr};

}  // namespace

Fd create_heartbeat_page() noexcept {
    Fd page(::memfd_create("sdfutures-heartbeat", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!page) return page;
    if (::ftruncate(page.get(), kHeartbeatPageBytes) != 0 || ::fcntl(page.get(), F_ADD_SEALS, kRequiredSeals) != 0)
        return Fd();
    return page;
}

bool adopt_heartbeat_page(int page) noexcept {
    void* map = ::mmap(nullptr, kHeartbeatPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED, page, 0);
    if (map == MAP_FAILED) return false;
    heartbeat_stamp.store(static_cast<HeartbeatStamp*>(map), std::memory_order_relaxed);
    return true;
}

void forget_heartbeat_page() noexcept { heartbeat_stamp.store(nullptr, std::memory_order_relaxed); }

HeartbeatStamp* heartbeat_target() noexcept { return heartbeat_stamp.load(std::memory_order_relaxed); }

void set_heartbeat_target(HeartbeatStamp* stamp) noexcept { heartbeat_stamp.store(stamp, std::memory_order_relaxed); }

HeartbeatView::HeartbeatView(const Fd& page) {
    struct stat st {};
    if (::fstat(page.get(), &st) != 0) throw Error("fstat of a worker's heartbeat page: " + errno_text(errno));
    const int seals = ::fcntl(page.get(), F_GET_SEALS);
    if (static_cast<std::size_t>(st.st_size) != kHeartbeatPageBytes || seals < 0 ||
        (seals & kRequiredSeals) != kRequiredSeals)
        throw Error("a worker's heartbeat page is not a sealed page of " + std::to_string(kHeartbeatPageBytes) +
                    " bytes; the owner does not map it");
    void* map = ::mmap(nullptr, kHeartbeatPageBytes, PROT_READ, MAP_SHARED, page.get(), 0);
    if (map == MAP_FAILED) throw Error("mmap of a worker's heartbeat page: " + errno_text(errno));
    mapping_ = map;
    stamp_ = static_cast<const HeartbeatStamp*>(map);
}

HeartbeatView::HeartbeatView(HeartbeatView&& other) noexcept
    : mapping_(std::exchange(other.mapping_, nullptr)), stamp_(std::exchange(other.stamp_, nullptr)) {}

HeartbeatView& HeartbeatView::operator=(HeartbeatView&& other) noexcept {
    if (this != &other) {
        unmap();
        mapping_ = std::exchange(other.mapping_, nullptr);
        stamp_ = std::exchange(other.stamp_, nullptr);
    }
    return *this;
}

HeartbeatView::~HeartbeatView() { unmap(); }

void HeartbeatView::unmap() noexcept {
    if (mapping_) ::munmap(mapping_, kHeartbeatPageBytes);
    mapping_ = nullptr;
    stamp_ = nullptr;
}

}  // namespace detail

void this_task::heartbeat() noexcept {
    detail::HeartbeatStamp* stamp = detail::heartbeat_stamp.load(std::memory_order_relaxed);
    if (!stamp) return;
    const auto now = std::chrono::steady_clock::now().time_since_epoch();
    stamp->store(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count(), std::memory_order_relaxed);
}

}  // namespace sdfutures
