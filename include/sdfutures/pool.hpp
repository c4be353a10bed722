#pragma once
// TransientUnitPoolExecutor: a pool of long-lived worker processes inside ONE transient service, like
// concurrent.futures.ProcessPoolExecutor, with std::future results.
//
//     sdfutures::TransientUnitPoolExecutor pool({{"CPUQuota", "25%"}, {"User", "nobody"}});
//     std::future<int> f = pool.submit(&burn, 5);
//     std::vector<int> squares = pool.map(&square, inputs);
//     sdfutures::Task<int> t = pool.schedule(&burn, 5);   // done(), running(), on_done(), cancel()
//     for (auto& done : sdfutures::as_completed(tasks)) ...   // <sdfutures/completion.hpp>
//
// What a task is. Workers are forked once, at construction (and to replace one that died), from a small
// single-threaded fork server that is itself a fork of the owner; they are not forked per task. So a task
// cannot carry a closure's captured state: it is a function pointer or a stateless callable (a captureless
// lambda) — whose code address is the same in every worker, since they are forks of the same program — plus
// arguments serialized like results. A capturing lambda is a compile-time error: use TransientUnitProcess or
// run() for closures, which fork per call. Code loaded with dlopen() after the pool was constructed is not
// mapped in its workers.
//
// Faults are contained: a worker that dies mid-task (a crash, abort(), _exit(), the OOM killer under
// MemoryMax=) fails only that task's future with ProcessDied saying how; the pool replaces the worker and
// goes on. A task over task_timeout fails with TaskTimeout and its worker is killed and replaced; one that goes
// over heartbeat_timeout without calling sdfutures::this_task::heartbeat() fails with TaskStalled, likewise. If the unit
// is stopped from outside (systemctl stop), every unfinished future fails with UnitStopped at once and
// submit() throws UnitStopped.
//
// Fork safety. Workers are forked only by the fork server, which never runs a thread or takes a lock of the
// library. The remaining caveat is the fork of the fork server itself, at construction: like any fork, it
// copies only the constructing thread, so a lock held at that moment by another thread of the program (one
// the user started) stays locked in the fork server and in the workers. Construct pools before starting
// threads that hold locks a task might need, or do not take such locks in tasks.

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "sdfutures/bus.hpp"
#include "sdfutures/completion.hpp"
#include "sdfutures/detail/blob_reply.hpp"
#include "sdfutures/detail/chunks.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/imap.hpp"
#include "sdfutures/pool_stats.hpp"
#include "sdfutures/process.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/serialization.hpp"
#include "sdfutures/start_method.hpp"
#include "sdfutures/task.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures {

struct PoolOptions {
    std::size_t max_workers = 0;          // 0: the CPUs CPUQuota=/AllowedCPUs= allow (at least 1)
    std::size_t max_tasks_per_child = 0;  // 0: unlimited; N: a worker is replaced after N tasks
    // How many tasks a worker holds at once: the one it runs and those sent ahead so it finds its next one waiting
    // (only when the queue is deeper than the pool). 1: nothing waits behind a running task. See "A hostile task".
    std::size_t max_window = 8;
    std::function<void()> initializer;    // runs once in each worker after it entered the unit
    std::optional<std::chrono::milliseconds> task_timeout;  // a task running longer fails with TaskTimeout
    // A task that goes longer than this without calling sdfutures::this_task::heartbeat() (from its start, then
    // from each call) fails with TaskStalled, its worker killed and replaced. Unlike task_timeout, a task that
    // keeps calling heartbeat() runs as long as it takes. std::nullopt: no heartbeat is watched.
    std::optional<std::chrono::milliseconds> heartbeat_timeout;
    // How long the destructor waits for unfinished tasks before it kills the workers (their futures then fail
    // with TaskCancelled). std::nullopt: wait as long as they take.
    std::optional<std::chrono::milliseconds> shutdown_timeout = std::chrono::seconds(30);
    StartMethod start_method = StartMethod::fork;
    std::optional<Bus> bus;               // default: Bus::automatic()
    std::string unit_name;                // default: "sdfutures-pool-<pid>-<n>-<random>.service"
    std::size_t max_result_bytes = 256u << 20;
    bool keep_stdio = false;              // keep the owner's stdout/stderr in workers (else /dev/null)
    // How long the pool's dispatcher thread polls its workers and submitters without sleeping, when their answers
    // and tasks have lately come that fast: a round trip then costs no thread wake-up (docs/benchmarks.md,
    // figure 2). Adaptive: with tasks that take longer than this it does not spin. Zero (or less): it always sleeps.
    std::chrono::microseconds dispatcher_spin{50};
};

// How map() sends its inputs and waits for its results.
struct MapOptions {
    std::size_t chunksize = 1;  // inputs per task (and message); 0 and 1: one task per input
    std::optional<std::chrono::milliseconds> timeout;  // for all the results, from the call: WaitTimeout after it
};

namespace detail {

// Runs a task in a worker: decodes the arguments, calls the function, encodes the reply (a large blob result by
// reference, blob_reply.hpp).
using TaskInvoker = EncodedReply (*)(std::uintptr_t function, std::string_view arguments, const WireLimits& limits);

struct TaskState;

class PoolCore {
public:
    PoolCore(Properties properties, PoolOptions options);
    ~PoolCore();
    PoolCore(const PoolCore&) = delete;
    PoolCore& operator=(const PoolCore&) = delete;

    // `complete` gets the reply payload, to keep (a std::string result is the payload itself, blob_reply.hpp): it
    // decodes it, fulfils the promise, and says what the promise holds (malformed: the payload was not a reply,
    // and the promise holds the ProtocolError). `fail` gets an error the pool itself raised (worker death,
    // timeout, unit stopped, cancellation). Exactly one of them is called, once.
    enum class Reply { value, exception, malformed };
    struct Submission {
        TaskInvoker invoker;
        std::uintptr_t function;
        std::string arguments;
        std::function<Reply(std::string&& reply)> complete;
        std::function<void(std::exception_ptr)> fail;
    };
    std::shared_ptr<TaskState> submit(Submission submission);
    std::vector<std::shared_ptr<TaskState>> submit_many(std::vector<Submission> submissions);
    static bool cancel(const std::shared_ptr<TaskState>& task);
    void shutdown(bool wait, bool cancel_pending);
    // Ends every worker (SIGTERM, then SIGKILL after `grace`; no grace: SIGKILL at once), fails every unfinished
    // task with TaskCancelled and leaves the pool shut down. Returns once the workers are gone.
    void end_workers(std::optional<std::chrono::milliseconds> grace);

    const Unit& unit() const;
    PoolStats stats() const;
    std::vector<pid_t> worker_pids() const;
    std::size_t max_workers() const noexcept;
    const WireLimits& limits() const noexcept;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

template <class F>
concept StatelessCallable = std::is_empty_v<F> && std::is_default_constructible_v<F> && std::is_class_v<F>;

template <class F>
concept FunctionPointer = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

template <class R, class F, class... A>
EncodedReply invoke_task(std::uintptr_t function, std::string_view arguments, const WireLimits& limits) {
    std::tuple<A...> args;
    try {
        args = unpack_value<std::tuple<A...>>(arguments, limits);
    } catch (...) {
        return encode_exception_reply(std::current_exception());
    }
    auto call = [&]() -> R {
        if constexpr (FunctionPointer<F>) {
            return std::apply(reinterpret_cast<F>(function), std::move(args));
        } else {
            return std::apply(F{}, std::move(args));
        }
    };
    return run_and_encode<R>(std::function<R()>(call), limits);
}

// Runs a map() chunk in a worker: f over every input of the chunk. While no element throws, the results travel as
// one array (ChunkReplyBody's values, the fast path); from the first element that throws on, every element's
// outcome is encoded as its own reply (the replies), so that an element's exception stays that element's (see
// <sdfutures/detail/chunks.hpp>).
template <class R, class F, class A>
EncodedReply invoke_chunk(std::uintptr_t function, std::string_view arguments, const WireLimits& limits) {
    std::vector<A> inputs;
    try {
        inputs = from_chunk_values<A>(unpack_value<ChunkValues<A>>(arguments, limits), "a map() chunk's inputs");
    } catch (...) {
        return encode_exception_reply(std::current_exception());
    }
    auto call = [&](A& input) -> R {
        if constexpr (FunctionPointer<F>) {
            return reinterpret_cast<F>(function)(std::move(input));
        } else {
            return F{}(std::move(input));
        }
    };
    std::function<ChunkReplyBody<R>()> run_all = [&] {
        ChunkReplyBody<R> body;
        std::vector<R> values;
        auto& replies = body.second;
        values.reserve(inputs.size());
        std::size_t i = 0;
        std::exception_ptr first_error;
        for (; i < inputs.size(); ++i) {
            try {
                values.push_back(call(inputs[i]));
            } catch (...) {
                first_error = std::current_exception();
                break;
            }
        }
        if (!first_error) {
            body.first = to_chunk_values(std::move(values));
            return body;
        }
        replies.reserve(inputs.size());
        for (auto& value : values) replies.push_back(encode_value_reply(value, limits));
        values.clear();
        replies.push_back(encode_exception_reply(first_error));
        for (++i; i < inputs.size(); ++i) {
            std::function<R()> one = [&] { return call(inputs[i]); };
            replies.push_back(run_and_encode<R>(one, limits).joined());
        }
        return body;
    };
    return run_and_encode<ChunkReplyBody<R>>(run_all, limits);
}

template <class F>
using TaskFunction = std::conditional_t<std::is_function_v<std::remove_reference_t<F>>,
                                        std::add_pointer_t<std::remove_reference_t<F>>, std::decay_t<F>>;

}  // namespace detail

class TransientUnitPoolExecutor {
public:
    // Starts the unit and max_workers workers; returns once every worker has entered the unit. Throws
    // (PropertyError, UnsupportedProperty, BusError, SystemdError, StartFailed, SetupError) leaving nothing.
    explicit TransientUnitPoolExecutor(Properties properties, PoolOptions options = {})
        : core_(std::move(properties), std::move(options)) {}
    // Shuts down, waits for every task (at most PoolOptions::shutdown_timeout, then kills the workers and fails
    // what is left with TaskCancelled), stops the unit and returns only when it is gone.
    ~TransientUnitPoolExecutor() = default;
    TransientUnitPoolExecutor(const TransientUnitPoolExecutor&) = delete;
    TransientUnitPoolExecutor& operator=(const TransientUnitPoolExecutor&) = delete;

    template <class F, class... Args>
    auto schedule(F&& f, Args&&... args) {
        using Fn = detail::TaskFunction<F>;
        using R = std::invoke_result_t<Fn&, std::decay_t<Args>&&...>;
        check_task<Fn, R, std::decay_t<Args>...>();
        auto [future, state] = make_submission<R, Fn, std::decay_t<Args>...>(f, std::forward<Args>(args)...);
        return Task<R>(std::move(future), std::move(state));
    }

    template <class F, class... Args>
    auto submit(F&& f, Args&&... args) {
        return schedule(std::forward<F>(f), std::forward<Args>(args)...).take_future();
    }

    // f applied to every element, results in input order. The first failing element's exception is rethrown (after
    // the elements before it were collected). With options.timeout, WaitTimeout once the results are not all
    // there that long after the call. On the way out by an exception, the tasks not finished are cancelled (a
    // running one has its worker killed): their results could not be had any more.
    //
    // options.chunksize N > 1 sends N elements per task (one message each way), which is much cheaper for small
    // elements. An element's exception is still that element's: each element's outcome travels in the chunk's
    // reply. A fault of the task as a whole (its worker crashed or ran over task_timeout, it was cancelled) is the
    // error of all its elements; the pool's task_timeout and stats() then count chunks, not elements.
    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& inputs, MapOptions options = {}) {
        using Fn = detail::TaskFunction<F>;
        using Arg = std::decay_t<std::ranges::range_reference_t<Range>>;
        using R = std::invoke_result_t<Fn&, Arg&&>;
        check_task<Fn, R, Arg>();
        static_assert(!std::is_void_v<R>, "sdfutures: map() needs a function that returns a value");
        const auto deadline = detail::deadline_after(options.timeout);
        if (options.chunksize <= 1) {
            std::vector<std::future<R>> futures;
            std::vector<detail::PoolCore::Submission> batch;
            for (auto&& input : inputs) {
                auto [submission, future] = prepare<R, Fn, Arg>(f, std::forward<decltype(input)>(input));
                batch.push_back(std::move(submission));
                futures.push_back(std::move(future));
            }
            CancelUnfinished unfinished{core_.submit_many(std::move(batch))};  // one lock and one wake-up
            // One sleep for all of them, not one per future: the dispatcher then settles each task without waking
            // this thread (a futex wake and a context switch per task, docs/benchmarks.md figure 2). Woken early
            // by a failure, so that it is rethrown and the rest cancelled as soon as it is known.
            if (!detail::wait_settled(unfinished.tasks, deadline)) throw map_timeout(options);
            std::vector<R> results;
            results.reserve(futures.size());
            for (auto& future : futures) results.push_back(wait_for_result(future, deadline, options)->get());
            unfinished.tasks.clear();
            return results;
        }
        std::vector<std::future<std::vector<detail::ChunkElement<R>>>> futures;
        std::vector<detail::PoolCore::Submission> batch;
        std::vector<Arg> chunk;
        std::size_t count = 0;
        auto add_chunk = [&] {
            auto [submission, future] = prepare_chunk<R, Fn, Arg>(f, std::exchange(chunk, {}));
            batch.push_back(std::move(submission));
            futures.push_back(std::move(future));
        };
        for (auto&& input : inputs) {
            chunk.emplace_back(std::forward<decltype(input)>(input));
            ++count;
            if (chunk.size() == options.chunksize) add_chunk();
        }
        if (!chunk.empty()) add_chunk();
        CancelUnfinished unfinished{core_.submit_many(std::move(batch))};
        std::vector<R> results;
        results.reserve(count);
        for (auto& future : futures) {
            for (auto& element : wait_for_result(future, deadline, options)->get()) {
                if (element.error) std::rethrow_exception(element.error);
                results.push_back(std::move(*element.value));
            }
        }
        unfinished.tasks.clear();
        return results;
    }

    // map() as a lazy range in input order (see <sdfutures/imap.hpp>): inputs are taken as results are consumed,
    // at most options.buffersize elements in flight; each element throws its own exception when reached.
    template <class F, std::ranges::input_range Range>
    auto imap(F&& f, Range&& inputs, ImapOptions options = {}) {
        return lazy_map<F>(f, std::forward<Range>(inputs), options, detail::YieldOrder::input);
    }
    // imap() yielding each chunk's elements as soon as that chunk is done; the iterator's index() says which input
    // an element is.
    template <class F, std::ranges::input_range Range>
    auto imap_unordered(F&& f, Range&& inputs, ImapOptions options = {}) {
        return lazy_map<F>(f, std::forward<Range>(inputs), options, detail::YieldOrder::completion);
    }

    // Stops accepting tasks. cancel_pending: tasks still queued (not sent to a worker) fail with TaskCancelled. wait: returns once
    // every task has finished and the workers have exited (the unit itself is stopped by the destructor).
    void shutdown(bool wait = true, bool cancel_pending = false) { core_.shutdown(wait, cancel_pending); }

    // Ends the workers now, like Python's terminate_workers() / kill_workers(): every unfinished future fails with
    // TaskCancelled, and the pool is shut down (submit() throws StateError). terminate_workers sends SIGTERM and
    // SIGKILL after `grace`; kill_workers sends SIGKILL (which also ends a stopped worker). Return once the
    // workers are gone; the unit itself is stopped by the destructor.
    void terminate_workers(std::chrono::milliseconds grace = std::chrono::seconds(1)) { core_.end_workers(grace); }
    void kill_workers() { core_.end_workers(std::nullopt); }

    const Unit& unit() const { return core_.unit(); }
    // The tasks queued and running now, and those finished and workers replaced so far (see PoolStats).
    PoolStats stats() const { return core_.stats(); }
    std::vector<pid_t> worker_pids() const { return core_.worker_pids(); }
    std::size_t max_workers() const noexcept { return core_.max_workers(); }

private:
    // What makes a callable and its arguments a pool task, with messages that say what to do instead.
    template <class Fn, class R, class... A>
    static constexpr void check_task() {
        static_assert(detail::FunctionPointer<Fn> || detail::StatelessCallable<Fn>,
                      "sdfutures: a pool task must be a function pointer or a stateless callable (e.g. a captureless "
                      "lambda): workers are long-lived forks, so a closure's captured state cannot travel to them. "
                      "Pass the state as arguments, or use sdfutures::TransientUnitProcess / sdfutures::run for "
                      "closures.");
        static_assert((Serializable<A> && ...),
                      "sdfutures: every argument of a pool task must be serializable (see "
                      "<sdfutures/serialization.hpp>); pointers and references to the owner's memory mean "
                      "nothing in a worker.");
        static_assert(std::is_void_v<R> || Serializable<R>,
                      "sdfutures: the task's result type cannot be sent back from a worker; see "
                      "<sdfutures/serialization.hpp>.");
    }

    // Cancels, when map() leaves by an exception, the tasks it submitted that are not finished.
    struct CancelUnfinished {
        std::vector<std::shared_ptr<detail::TaskState>> tasks;
        explicit CancelUnfinished(std::vector<std::shared_ptr<detail::TaskState>> submitted)
            : tasks(std::move(submitted)) {}
        CancelUnfinished(const CancelUnfinished&) = delete;
        CancelUnfinished& operator=(const CancelUnfinished&) = delete;
        ~CancelUnfinished() {
            for (auto& task : tasks) detail::PoolCore::cancel(task);
        }
    };

    template <class Future>
    static Future* wait_for_result(Future& future, std::optional<std::chrono::steady_clock::time_point> deadline,
                                   const MapOptions& options) {
        if (deadline && future.wait_until(*deadline) == std::future_status::timeout) throw map_timeout(options);
        return &future;
    }

    static WaitTimeout map_timeout(const MapOptions& options) {
        return WaitTimeout("map(): the results were not all there within " + std::to_string(options.timeout->count()) +
                           " ms; the tasks not finished were cancelled");
    }

    template <class F, class Range>
    auto lazy_map(F& f, Range&& inputs, const ImapOptions& options, detail::YieldOrder order) {
        using Fn = detail::TaskFunction<F>;
        using Arg = std::decay_t<std::ranges::range_reference_t<Range>>;
        using R = std::invoke_result_t<Fn&, Arg&&>;
        check_task<Fn, R, Arg>();
        static_assert(!std::is_void_v<R>, "sdfutures: imap() needs a function that returns a value");
        using View = std::views::all_t<Range>;
        const std::size_t chunksize = options.chunksize < 1 ? 1 : options.chunksize;
        const std::size_t buffersize = options.buffersize ? options.buffersize : 8 * chunksize * core_.max_workers();
        detail::ChunkSender<R, Arg> send = [this, address = function_address<Fn>(f)](
                                               std::vector<std::vector<Arg>> chunks) {
            std::vector<detail::PoolCore::Submission> batch;
            std::vector<std::future<std::vector<detail::ChunkElement<R>>>> futures;
            batch.reserve(chunks.size());
            futures.reserve(chunks.size());
            for (auto& chunk : chunks) {
                auto [submission, future] = prepare_chunk_at<R, Fn, Arg>(address, std::move(chunk));
                batch.push_back(std::move(submission));
                futures.push_back(std::move(future));
            }
            auto states = core_.submit_many(std::move(batch));
            std::vector<detail::SentChunk<R>> sent;
            sent.reserve(states.size());
            for (std::size_t i = 0; i < states.size(); ++i) sent.push_back({std::move(futures[i]), std::move(states[i])});
            return sent;
        };
        return ImapRange<R, View, Arg>(std::views::all(std::forward<Range>(inputs)), std::move(send), chunksize,
                                       buffersize, options.timeout, order);
    }

    template <class R, class Fn, class Arg, class F>
    auto prepare_chunk(F& f, std::vector<Arg> chunk) {
        return prepare_chunk_at<R, Fn, Arg>(function_address<Fn>(f), std::move(chunk));
    }
    template <class R, class Fn, class Arg>
    auto prepare_chunk_at(std::uintptr_t address, std::vector<Arg> chunk) {
        using Elements = std::vector<detail::ChunkElement<R>>;
        auto promise = std::make_shared<std::promise<Elements>>();
        std::future<Elements> future = promise->get_future();
        const std::size_t size = chunk.size();
        detail::PoolCore::Submission s{
            &detail::invoke_chunk<R, Fn, Arg>, address, detail::pack_value(detail::to_chunk_values(std::move(chunk))),
            [promise, size, limits = core_.limits()](std::string&& reply) {
                return settle(*promise, [&] { return detail::decode_chunk<R>(reply, size, limits); });
            },
            [promise](std::exception_ptr error) { promise->set_exception(std::move(error)); }};
        return std::pair{std::move(s), std::move(future)};
    }

    // A function pointer's address (a stateless callable has none: its type is the code).
    template <class Fn, class F>
    static std::uintptr_t function_address(F& f) {
        if constexpr (detail::FunctionPointer<Fn>) return reinterpret_cast<std::uintptr_t>(static_cast<Fn>(f));
        (void)f;
        return 0;
    }

    // Fulfils `promise` with what `decode` makes of a worker's reply, or with the exception it throws; says which.
    template <class T, class Decode>
    static detail::PoolCore::Reply settle(std::promise<T>& promise, Decode&& decode) {
        using Reply = detail::PoolCore::Reply;
        try {
            if constexpr (std::is_void_v<T>) {
                decode();
                promise.set_value();
            } else {
                promise.set_value(decode());
            }
        } catch (const ProtocolError&) {
            promise.set_exception(std::current_exception());
            return Reply::malformed;
        } catch (...) {
            promise.set_exception(std::current_exception());
            return Reply::exception;
        }
        return Reply::value;
    }

    template <class R, class Fn, class... A, class F, class... Args>
    auto prepare(F& f, Args&&... args) {
        auto promise = std::make_shared<std::promise<R>>();
        std::future<R> future = promise->get_future();
        detail::PoolCore::Submission s{
            &detail::invoke_task<R, Fn, A...>, function_address<Fn>(f),
            detail::pack_value(std::tuple<A...>(std::forward<Args>(args)...)),
            [promise, limits = core_.limits()](std::string&& reply) {
                return settle(*promise, [&] { return detail::decode_reply<R>(std::move(reply), limits); });
            },
            [promise](std::exception_ptr error) { promise->set_exception(std::move(error)); }};
        return std::pair{std::move(s), std::move(future)};
    }

    template <class R, class Fn, class... A, class F, class... Args>
    std::pair<std::future<R>, std::shared_ptr<detail::TaskState>> make_submission(F& f, Args&&... args) {
        auto [submission, future] = prepare<R, Fn, A...>(f, std::forward<Args>(args)...);
        auto state = core_.submit(std::move(submission));
        return {std::move(future), std::move(state)};
    }

    detail::PoolCore core_;
};

namespace detail {

// TransientUnitProcess(exec, ...): a one-worker pool of one task, whose unit is gone once the task has ended.
template <class R, class Fn, class... Args>
class PooledExecRun final : public ExecRun<R> {
    static_assert(FunctionPointer<TaskFunction<Fn>> || StatelessCallable<TaskFunction<Fn>>,
                  "sdfutures::TransientUnitProcess(sdfutures::exec, ...): the function must be a function pointer or "
                  "a stateless callable of the program: a process systemd executes holds nothing of this one, no "
                  "closure's state. Pass the state as arguments, or leave out sdfutures::exec, which forks.");

public:
    template <class F, class... A>
    PooledExecRun(Properties properties, ProcessOptions options, F&& f, A&&... args)
        : properties_(std::move(properties)), options_(std::move(options)), f_(std::forward<F>(f)),
          args_(std::forward<A>(args)...) {}

    void start() override {
        if (pool_ || exit_status_) throw StateError("TransientUnitProcess::start() was called already");
        PoolOptions pool_options;  // assigned, not designated: a user's -Wextra would report each member left out
        pool_options.max_workers = 1;
        pool_options.max_tasks_per_child = 1;
        pool_options.start_method = StartMethod::exec;
        pool_options.bus = options_.bus;
        pool_options.unit_name = options_.unit_name;
        pool_options.max_result_bytes = options_.max_result_bytes;
        pool_options.keep_stdio = options_.keep_stdio;
        pool_.emplace(std::move(properties_), std::move(pool_options));
        unit_.emplace(pool_->unit());
        future_ = std::apply([this](Args&... a) { return pool_->submit(f_, std::move(a)...); }, args_);
        auto pids = pool_->worker_pids();
        if (!pids.empty()) pid_ = pids.front();
    }
    bool is_alive() override {
        return pool_ && future_.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
    }
    bool join(std::optional<std::chrono::milliseconds> timeout) override {
        if (!pool_ && !exit_status_) throw StateError("TransientUnitProcess::join() before start()");
        if (exit_status_) return true;
        if (timeout && future_.wait_for(*timeout) != std::future_status::ready) return false;
        settle();
        return true;
    }
    // The worker's pid is the process multiprocessing would signal; the unit's main process (the program systemd
    // executed, serving the pool) is not it.
    void signal(int signo) override {
        if (!is_alive()) return;
        for (pid_t worker : pool_->worker_pids()) {
            pid_ = worker;
            ::kill(worker, signo);
        }
    }
    std::optional<int> exit_status() const override { return exit_status_; }
    R result() override {
        join(std::nullopt);
        if (error_) std::rethrow_exception(error_);
        if constexpr (std::is_void_v<R>) {
            return;
        } else {
            return std::move(*value_);
        }
    }
    pid_t pid() const noexcept override { return pid_; }
    const Unit& unit() const override {
        if (!unit_) throw StateError("TransientUnitProcess::unit() before start()");
        return *unit_;
    }

private:
    // Takes the task's outcome, as a forked child's exit status would tell it, and stops the unit.
    void settle() {
        try {
            if constexpr (std::is_void_v<R>) future_.get();
            else value_.emplace(future_.get());
            exit_status_ = 0;
        } catch (const ProcessDied& e) {
            error_ = std::current_exception();
            exit_status_ = e.exit_status();
        } catch (const UnitStopped&) {
            error_ = std::current_exception();
            exit_status_ = -SIGTERM;  // what systemd's stop sends first
        } catch (...) {
            error_ = std::current_exception();  // the function's own exception: the child itself ended well
            exit_status_ = 0;
        }
        pool_.reset();  // the pool's teardown stops the unit and waits until it is gone
    }

    // All of it is the owning thread's, as for a forked TransientUnitProcess.
    Properties properties_;
    ProcessOptions options_;
    Fn f_;
    std::tuple<Args...> args_;
    std::optional<TransientUnitPoolExecutor> pool_;
    std::optional<Unit> unit_;
    std::future<R> future_;
    pid_t pid_ = 0;
    std::optional<int> exit_status_;
    std::exception_ptr error_;
    std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> value_{};
};

}  // namespace detail

// run(), with systemd executing the program (StartMethod::exec) instead of forking the caller:
//
//     auto parsed = sdfutures::run(sdfutures::exec, {{"DynamicUser", "yes"}, {"SystemCallFilter", "@system-service"}},
//                                  &parse, untrusted_bytes);
//
// f runs once, in a fresh execution of this program by systemd (sdfutures::init() first in main()), with every
// property systemd accepts for a service; the unit is gone when this returns. A one-worker pool of one task.

template <class F, class... Args>
auto run(exec_tag, Properties properties, F&& f, Args&&... args) {
    using Fn = detail::TaskFunction<F>;
    static_assert(detail::FunctionPointer<Fn> || detail::StatelessCallable<Fn>,
                  "sdfutures::run(sdfutures::exec, ...): the function must be a function pointer or a stateless "
                  "callable of the program: a process systemd executes holds nothing of this one, no closure's "
                  "state. Pass the state as arguments, or use sdfutures::run(properties, f, ...), which forks.");
    PoolOptions options;  // assigned, not designated: a user's -Wextra would report each member left out
    options.max_workers = 1;
    options.max_tasks_per_child = 1;
    options.start_method = StartMethod::exec;
    TransientUnitPoolExecutor pool(std::move(properties), std::move(options));
    return pool.submit(std::forward<F>(f), std::forward<Args>(args)...).get();
}

}  // namespace sdfutures
