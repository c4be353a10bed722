#pragma once
// imap() and imap_unordered(): map() as a lazy range, like Python's Pool.imap / imap_unordered and
// Executor.map(buffersize=).
//
//     for (auto it = pool.imap(&parse, files, {.chunksize = 64}).begin(); it != std::default_sentinel; ++it) {
//         try { use(*it); }                              // the result for files[it.index()]
//         catch (const std::exception& e) { skip(it.index(), e); }  // that element's own exception
//     }
//
// Inputs are taken from the range only as results are consumed: at most `buffersize` elements are sent and not
// yet yielded, so an endless input range (std::views::iota(0)) or one larger than memory works, and the owner
// holds a bounded number of inputs and results. imap yields in input order; imap_unordered yields each chunk's
// elements as soon as that chunk is done (in input order within a chunk), which keeps fast results from waiting
// behind a slow one. Each element's exception is its own and is thrown when that element is reached (`*it`);
// the iteration goes on after it. A fault of a chunk as a whole (its worker crashed, task_timeout, cancellation)
// is the error of each of its elements.
//
// Leaving the range early (break, an exception, destroying it) cancels what it sent and was not yielded: a queued
// chunk never runs, a running one has its worker killed and replaced (see Task::cancel()). The range belongs to
// the thread iterating it, takes its inputs on that thread, and must not outlive its pool.

#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <utility>
#include <vector>

#include "sdfutures/completion.hpp"
#include "sdfutures/detail/chunks.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/task.hpp"

namespace sdfutures {

struct ImapOptions {
    std::size_t chunksize = 1;  // inputs per task (and message); 0 and 1: one task per input
    // At most this many elements sent and not yet yielded (at least one chunk). 0: 8 chunks per worker, which keeps
    // every worker's window full (PoolOptions::max_window).
    std::size_t buffersize = 0;
    // For every result, from the call: reaching an element not there by then throws WaitTimeout (and the range
    // cancels what it has in flight when it is destroyed).
    std::optional<std::chrono::milliseconds> timeout;
};

namespace detail {

enum class YieldOrder { input, completion };

// A chunk the pool has been given, as the range keeps it.
template <class R>
struct SentChunk {
    std::future<std::vector<ChunkElement<R>>> future;
    std::shared_ptr<TaskState> state;
};

// Hands chunks of inputs to the pool in one batch (the pool builds it; see TransientUnitPoolExecutor::imap).
template <class R, class Arg>
using ChunkSender = std::function<std::vector<SentChunk<R>>(std::vector<std::vector<Arg>>)>;

}  // namespace detail

template <class R, class View, class Arg>
class ImapRange {
public:
    ImapRange(View inputs, detail::ChunkSender<R, Arg> send, std::size_t chunksize, std::size_t buffersize,
              std::optional<std::chrono::milliseconds> timeout, detail::YieldOrder order)
        : inputs_(std::move(inputs)), next_input_(std::ranges::begin(inputs_)), send_(std::move(send)),
          chunksize_(chunksize < 1 ? 1 : chunksize), buffersize_(buffersize < chunksize_ ? chunksize_ : buffersize),
          deadline_(detail::deadline_after(timeout)), timeout_(timeout), order_(order) {
        if (order_ == detail::YieldOrder::completion) completed_ = detail::make_completion_queue();
    }
    ~ImapRange() {
        for (auto& [number, chunk] : in_flight_) {
            if (completed_) detail::unwatch_task(*chunk.sent.state, *completed_);
            detail::cancel_task(chunk.sent.state);
        }
    }
    ImapRange(const ImapRange&) = delete;
    ImapRange& operator=(const ImapRange&) = delete;
    ImapRange(ImapRange&&) = delete;
    ImapRange& operator=(ImapRange&&) = delete;

    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = R;
        using difference_type = std::ptrdiff_t;
        using reference = R&;

        iterator() = default;
        explicit iterator(ImapRange* range) : range_(range) {
            if (!range_->advance()) range_ = nullptr;
        }
        // The element's result, or its exception thrown (each time it is asked).
        R& operator*() const { return range_->current(); }
        // Where the element is in the inputs (0 for the first input).
        std::size_t index() const noexcept { return range_->current_index(); }
        iterator& operator++() {
            if (!range_->advance()) range_ = nullptr;
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept { return it.range_ == nullptr; }

    private:
        ImapRange* range_ = nullptr;
    };

    // Sends the first chunks and waits for the first result. Call it once.
    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    struct InFlight {
        std::size_t first;  // index of its first input
        std::size_t size;
        detail::SentChunk<R> sent;
    };

    // Moves to the next element: false when every input has been yielded.
    bool advance() {
        if (yielding_ && ++position_ < elements_.size()) return true;
        yielding_ = false;
        elements_.clear();
        send_what_fits();
        if (in_flight_.empty()) return false;
        take(next_done_chunk());
        return true;
    }

    // Takes inputs and sends them, in chunks, while they fit in the buffer.
    void send_what_fits() {
        std::vector<std::vector<Arg>> batch;
        std::size_t sending = 0;
        while (!inputs_done_ && unyielded_ + sending + chunksize_ <= buffersize_) {
            std::vector<Arg> chunk;
            chunk.reserve(chunksize_);
            for (; chunk.size() < chunksize_ && next_input_ != std::ranges::end(inputs_); ++next_input_)
                chunk.emplace_back(*next_input_);
            if (next_input_ == std::ranges::end(inputs_)) inputs_done_ = true;
            if (chunk.empty()) break;
            sending += chunk.size();
            batch.push_back(std::move(chunk));
        }
        if (batch.empty()) return;
        std::vector<std::size_t> sizes;
        for (auto& chunk : batch) sizes.push_back(chunk.size());
        auto sent = send_(std::move(batch));  // may throw (the pool was shut down): nothing is counted then
        unyielded_ += sending;
        for (std::size_t i = 0; i < sent.size(); ++i) {
            const std::size_t number = next_chunk_number_++;
            auto& chunk = in_flight_.emplace(number, InFlight{taken_, sizes[i], std::move(sent[i])}).first->second;
            taken_ += sizes[i];
            if (completed_) detail::watch_task(*chunk.sent.state, completed_, number);
        }
    }

    // The number of the chunk to yield next, once it is done: the oldest (input order) or the first done.
    std::size_t next_done_chunk() {
        if (order_ == detail::YieldOrder::input) {
            auto& oldest = in_flight_.begin()->second;
            if (deadline_ && oldest.sent.future.wait_until(*deadline_) == std::future_status::timeout)
                throw_timeout();
            return in_flight_.begin()->first;
        }
        auto number = detail::next_completed(*completed_, deadline_);
        if (!number) throw_timeout();
        return *number;
    }

    // Makes the done chunk `number` the one being yielded.
    void take(std::size_t number) {
        auto node = in_flight_.extract(number);
        InFlight& chunk = node.mapped();
        try {
            elements_ = chunk.sent.future.get();
        } catch (...) {
            elements_.assign(chunk.size, detail::ChunkElement<R>{std::nullopt, std::current_exception()});
        }
        first_ = chunk.first;
        position_ = 0;
        yielding_ = true;
        unyielded_ -= chunk.size;  // they are the range's now: room for the next chunks
    }

    [[noreturn]] void throw_timeout() const {
        throw WaitTimeout("imap(): element " + std::to_string(yielded_index_hint()) + " was not there within " +
                          std::to_string(timeout_->count()) + " ms of the call");
    }
    std::size_t yielded_index_hint() const { return in_flight_.empty() ? taken_ : in_flight_.begin()->second.first; }

    R& current() const {
        auto& element = elements_[position_];
        if (element.error) std::rethrow_exception(element.error);
        return *element.value;
    }
    std::size_t current_index() const noexcept { return first_ + position_; }

    // All of it belongs to the thread iterating the range.
    View inputs_;
    std::ranges::iterator_t<View> next_input_;
    bool inputs_done_ = false;
    detail::ChunkSender<R, Arg> send_;
    const std::size_t chunksize_;
    const std::size_t buffersize_;
    const std::optional<std::chrono::steady_clock::time_point> deadline_;
    const std::optional<std::chrono::milliseconds> timeout_;
    const detail::YieldOrder order_;
    std::shared_ptr<detail::CompletionQueue> completed_;  // imap_unordered: chunk numbers as they are done
    std::map<std::size_t, InFlight> in_flight_;           // by chunk number, which is input order
    std::size_t next_chunk_number_ = 0;
    std::size_t taken_ = 0;      // inputs taken from the range so far
    std::size_t unyielded_ = 0;  // elements sent whose chunk has not been taken yet
    mutable std::vector<detail::ChunkElement<R>> elements_;  // the chunk being yielded
    std::size_t first_ = 0;
    std::size_t position_ = 0;
    bool yielding_ = false;
};

}  // namespace sdfutures
