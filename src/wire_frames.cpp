// The frames of a TransientUnitProcess's reply pipe (wire.hpp): a length header and a payload, read from a byte
// stream that may split them anywhere, bounded by WireLimits::max_frame_bytes before anything is allocated.
#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

#include "sdfutures/detail/huge_pages.hpp"
#include "sdfutures/detail/wire.hpp"

namespace sdfutures::detail {

namespace {

// Below this many outstanding payload bytes a read goes through the staging buffer: the copy is cheap and the
// read may also pick up the next frames.
constexpr std::size_t direct_read_threshold = 16u << 10;
constexpr std::size_t max_staging_bytes = FrameReader::default_read_bytes;
constexpr std::uint64_t max_header_length = UINT32_MAX;

}  // namespace

std::array<char, frame_header_bytes> frame_header(std::size_t payload_bytes) {
    if (payload_bytes > max_header_length) {
        throw std::length_error("a frame payload of " + std::to_string(payload_bytes) +
                                " bytes does not fit the 32-bit length header");
    }
    const auto length = static_cast<std::uint32_t>(payload_bytes);
    return {static_cast<char>(length & 0xFF), static_cast<char>((length >> 8) & 0xFF),
            static_cast<char>((length >> 16) & 0xFF), static_cast<char>((length >> 24) & 0xFF)};
}

std::string make_frame(std::string_view payload) {
    const auto header = frame_header(payload.size());
    std::string frame;
    frame.reserve(header.size() + payload.size());
    frame.append(header.data(), header.size()).append(payload);
    return frame;
}

FrameReader::FrameReader(WireLimits limits) : limits_(limits) {}

void FrameReader::feed(const char* data, std::size_t size) {
    throw_if_failed();
    area_ = Area::none;
    consume(data, size);
}

std::span<char> FrameReader::write_area(std::size_t max_bytes) {
    throw_if_failed();
    if (max_bytes == 0) throw std::invalid_argument("FrameReader::write_area: max_bytes must be positive");
    const std::size_t remaining = payload_length_ - payload_received_;
    if (in_payload_ && remaining >= direct_read_threshold) {
        const std::size_t size = std::min(max_bytes, remaining);
        // Only bytes never exposed before are zero-filled, so each payload byte is initialised at most once.
        if (payload_.size() < payload_received_ + size) payload_.resize(payload_received_ + size);
        area_ = Area::payload;
        area_size_ = size;
        return {payload_.data() + payload_received_, size};
    }
    const std::size_t size = std::min(max_bytes, max_staging_bytes);
    if (staging_.size() < size) staging_.resize(size);
    area_ = Area::staging;
    area_size_ = size;
    return {staging_.data(), size};
}

void FrameReader::commit(std::size_t bytes_written) {
    throw_if_failed();
    if (area_ == Area::none || bytes_written > area_size_) {
        throw std::logic_error("FrameReader::commit: " + std::to_string(bytes_written) +
                               " bytes committed without a write area that large");
    }
    const Area area = area_;
    area_ = Area::none;
    if (area == Area::staging) {
        consume(staging_.data(), bytes_written);
        return;
    }
    payload_received_ += bytes_written;
    stream_offset_ += bytes_written;
    if (payload_received_ == payload_length_) complete_payload();
}

std::optional<std::string> FrameReader::next() {
    if (complete_.empty()) return std::nullopt;
    std::string frame = std::move(complete_.front());
    complete_.pop_front();
    return frame;
}

bool FrameReader::mid_frame() const noexcept { return header_filled_ > 0 || in_payload_ || !failure_.empty(); }

void FrameReader::consume(const char* data, std::size_t size) {
    while (size > 0) {
        std::size_t take = 0;
        if (!in_payload_) {
            take = std::min(frame_header_bytes - header_filled_, size);
            std::memcpy(header_.data() + header_filled_, data, take);
            header_filled_ += take;
            stream_offset_ += take;
            if (header_filled_ == frame_header_bytes) {
                header_filled_ = 0;
                begin_payload(std::size_t{header_[0]} | std::size_t{header_[1]} << 8 | std::size_t{header_[2]} << 16 |
                              std::size_t{header_[3]} << 24);
            }
        } else {
            take = std::min(payload_length_ - payload_received_, size);
            // Part of the destination may already be exposed (and zero-filled) by an unused write area.
            const std::size_t exposed = payload_.size() - payload_received_;
            const std::size_t overwrite = std::min(exposed, take);
            std::memcpy(payload_.data() + payload_received_, data, overwrite);
            payload_.append(data + overwrite, take - overwrite);
            payload_received_ += take;
            stream_offset_ += take;
            if (payload_received_ == payload_length_) complete_payload();
        }
        data += take;
        size -= take;
    }
}

void FrameReader::begin_payload(std::size_t length) {
    if (length > limits_.max_frame_bytes) {
        fail("the frame header at stream offset " + std::to_string(stream_offset_ - frame_header_bytes) +
             " announces " + std::to_string(length) + " payload bytes, above the limit of " +
             std::to_string(limits_.max_frame_bytes));
    }
    in_payload_ = true;
    payload_length_ = length;
    payload_received_ = 0;
    payload_.clear();
    try {
        payload_.reserve(length);
        advise_huge_pages(payload_.data(), length);  // before the first byte lands: the faults are all to come
    } catch (const std::bad_alloc&) {
        // Not fatal: the payload then grows with the data, at the cost of some copying.
    }
    if (length == 0) complete_payload();
}

void FrameReader::complete_payload() {
    payload_.resize(payload_length_);
    complete_.push_back(std::move(payload_));
    payload_ = std::string();
    in_payload_ = false;
    payload_length_ = 0;
    payload_received_ = 0;
}

void FrameReader::throw_if_failed() const {
    if (!failure_.empty()) throw ProtocolError("the frame stream was already rejected: " + failure_);
}

void FrameReader::fail(const std::string& message) {
    failure_ = message;
    in_payload_ = false;
    header_filled_ = 0;
    payload_ = std::string();
    area_ = Area::none;
    throw ProtocolError(message);
}

}  // namespace sdfutures::detail
