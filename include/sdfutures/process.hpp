#pragma once
// TransientUnitProcess: one function, forked, running inside a transient service of its own under that
// unit's limits and identity; like multiprocessing.Process, with the result (or exception) coming back.
//
//     sdfutures::TransientUnitProcess p({{"User", "nobody"}, {"MemoryMax", "64M"}}, parse, input);
//     p.start();           // returns once the child is inside the unit; throws SetupError if it could not enter
//     auto value = p.result();  // joins; the value, the task's exception, or ProcessDied / UnitStopped
//
// The child is forked at start(), so any callable works, closures included: it runs on a copy of the
// parent's memory. It does not run a line of user code before it has entered the unit completely
// (attached to the unit's cgroup, in its namespaces, with its credentials; see README "What reaches the
// child").
//
// Destroying a TransientUnitProcess whose child still runs kills the child (SIGKILL), reaps it and stops
// the unit; join() first to wait for it. The unit never outlives the process: it is stopped and unloaded
// by join() once the child has ended, and by systemd itself if the owner dies (the unit's main process
// reads a pipe only the owner holds). Not thread-safe: one thread owns a TransientUnitProcess at a time.
// The child's parent-death signal follows the thread that called start(): if that thread exits while the
// child runs, the kernel kills the child. Start long-lived processes from a thread that outlives them.

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <concepts>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unistd.h>

#include "sdfutures/bus.hpp"
#include "sdfutures/detail/blob_reply.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/serialization.hpp"
#include "sdfutures/start_method.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures {

struct ProcessOptions {
    std::optional<Bus> bus;                      // default: Bus::automatic()
    std::string unit_name;                       // default: "sdfutures-process-<pid>-<n>-<random>.service"
    std::size_t max_result_bytes = 256u << 20;   // a larger reply is a ProtocolError, never an allocation
    bool keep_stdio = false;                     // keep the parent's stdout/stderr in the child (else /dev/null)
};

// How a unit property reaches a forked child (README: "What reaches the child").
enum class PropertyReach {
    cgroup,       // enforced by the kernel on the unit's cgroup, which the child is attached to
    namespaces,   // the child joins the namespaces systemd made for the unit's main process
    credentials,  // the child takes the main process's uid, gid and supplementary groups
    library,      // copied from the main process by sdfutures (rlimits, nice, environment, ...)
    unit,         // acts on the unit as a whole (stop timeouts, runtime limit, description)
};
// nullopt: the property cannot reach a forked child and is rejected.
std::optional<PropertyReach> property_reach(std::string_view name);
// Throws UnsupportedProperty naming the first property a forked child could not honour.
void check_properties_reach_forked_children(const Properties& properties);

namespace detail {

// Everything about a forked-into-a-unit child that does not depend on the function's type.
class ProcessCore {
public:
    // Writes the task's reply frame to the descriptor it is given; runs in the child only.
    using Body = std::function<void(int reply_fd)>;

    ProcessCore(Properties properties, ProcessOptions options);
    ProcessCore(const ProcessCore&) = delete;
    ProcessCore& operator=(const ProcessCore&) = delete;
    ~ProcessCore();

    void start(const Body& body);
    bool is_alive();
    bool join(std::optional<std::chrono::milliseconds> timeout);
    void signal(int signo);
    std::optional<int> exit_status() const;
    // After join: the reply payload, or throws what describes why there is none.
    std::string take_reply();
    pid_t pid() const noexcept;
    const Unit& unit() const;
    const WireLimits& limits() const noexcept;

private:
    // The unit, the bus, the child's descriptors and the reply being read (src/process.cpp). Owned by the thread
    // that owns the TransientUnitProcess; nothing in it is shared with another thread of the owner.
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The run of a TransientUnitProcess(exec, ...): systemd executes the program, and its fork runs the function (a
// one-worker pool of one task). PooledExecRun, the one implementation, is in <sdfutures/pool.hpp>, which that
// constructor needs (sdfutures.hpp includes both).
template <class R>
class ExecRun {
public:
    virtual ~ExecRun() = default;
    virtual void start() = 0;
    virtual bool is_alive() = 0;
    virtual bool join(std::optional<std::chrono::milliseconds> timeout) = 0;
    virtual void signal(int signo) = 0;
    virtual std::optional<int> exit_status() const = 0;
    virtual R result() = 0;
    virtual pid_t pid() const noexcept = 0;
    virtual const Unit& unit() const = 0;
};
template <class R, class Fn, class... Args>
class PooledExecRun;

// The reply to `call`: a large blob result is kept by reference, not copied (blob_reply.hpp).
template <class R>
EncodedReply run_and_encode(const std::function<R()>& call, const WireLimits& limits) noexcept {
    try {
        if constexpr (std::is_void_v<R>) {
            call();
            return encode_void_reply();
        } else {
            return encode_reply(call(), limits);
        }
    } catch (...) {
        return encode_exception_reply(std::current_exception());
    }
}

// Writes a whole frame (header, then the reply's head and blob in one writev); a child whose parent stopped
// listening just ends.
void write_reply_frame(int fd, const EncodedReply& payload) noexcept;

}  // namespace detail

template <class R>
class TransientUnitProcess {
    static_assert(std::is_void_v<R> || Serializable<R>,
                  "sdfutures: the function's result type cannot be sent back from the child process. Return a "
                  "standard type (arithmetic, enum, string, vector, map, optional, tuple, variant, chrono "
                  "duration, ...), give your type MSGPACK_DEFINE(...), or specialize msgpack's adaptors and "
                  "sdfutures::enable_serialization<T> (see <sdfutures/serialization.hpp>).");

public:
    template <class F, class... Args>
        requires(!std::same_as<std::remove_cvref_t<F>, ProcessOptions>)
    TransientUnitProcess(Properties properties, F&& f, Args&&... args)
        : TransientUnitProcess(std::move(properties), ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...) {}

    template <class F, class... Args>
    TransientUnitProcess(Properties properties, ProcessOptions options, F&& f, Args&&... args)
        : core_(std::in_place, std::move(properties), std::move(options)),
          call_([f = std::forward<F>(f), ... args = std::forward<Args>(args)]() mutable -> R {
              return std::invoke(f, args...);
          }) {}

    // StartMethod::exec: systemd executes this program (sdfutures::init() first in main()) as the unit's main
    // process, and its fork runs f: every property systemd accepts for a service applies (DynamicUser=,
    // SystemCallFilter=, PrivateDevices=, ...) and nothing of this process is copied. f is a function pointer or a
    // stateless callable; a closure is a compile-time error (its state would not be there). Needs
    // <sdfutures/pool.hpp>. The same calls as a forked one, with the same meaning.
    template <class F, class... Args>
    TransientUnitProcess(exec_tag, Properties properties, F&& f, Args&&... args)
        : TransientUnitProcess(exec, std::move(properties), ProcessOptions{}, std::forward<F>(f),
                               std::forward<Args>(args)...) {}
    template <class F, class... Args>
    TransientUnitProcess(exec_tag, Properties properties, ProcessOptions options, F&& f, Args&&... args)
        : exec_(std::make_unique<detail::PooledExecRun<R, std::decay_t<F>, std::decay_t<Args>...>>(
              std::move(properties), std::move(options), std::forward<F>(f), std::forward<Args>(args)...)) {}

    // Forks the child, starts its unit, attaches it and lets it run; returns once the child has entered
    // the unit. Throws PropertyError/UnsupportedProperty, BusError, SystemdError, StartFailed (a JobFailed naming the
    // exit status and the property behind it) or SetupError,
    // in which case no process and no unit remain.
    void start() {
        if (exec_) return exec_->start();
        core_->start([this](int reply_fd) {
            detail::write_reply_frame(reply_fd, detail::run_and_encode<R>(call_, core_->limits()));
        });
    }
    bool is_alive() { return exec_ ? exec_->is_alive() : core_->is_alive(); }
    // Waits for the child to end; its unit is stopped and gone when this returns.
    void join() { exec_ ? exec_->join(std::nullopt) : core_->join(std::nullopt); }
    // Whether it ended within the timeout.
    template <class Rep, class Period>
    bool join(std::chrono::duration<Rep, Period> timeout) {
        auto ms = std::chrono::ceil<std::chrono::milliseconds>(timeout);
        return exec_ ? exec_->join(ms) : core_->join(ms);
    }
    void terminate() { exec_ ? exec_->signal(SIGTERM) : core_->signal(SIGTERM); }
    void kill() { exec_ ? exec_->signal(SIGKILL) : core_->signal(SIGKILL); }
    // Like multiprocessing's exitcode: nullopt while running, >= 0 the exit code, < 0 the negated signal.
    std::optional<int> exit_status() const { return exec_ ? exec_->exit_status() : core_->exit_status(); }
    // Joins, then returns the function's value, rethrows its exception, or throws ProcessDied (how the child
    // died), UnitStopped (its unit was stopped) or ProtocolError (it sent garbage).
    R result() {
        if (exec_) return exec_->result();
        core_->join(std::nullopt);
        return detail::decode_reply<R>(core_->take_reply(), core_->limits());
    }
    pid_t pid() const noexcept { return exec_ ? exec_->pid() : core_->pid(); }
    const Unit& unit() const { return exec_ ? exec_->unit() : core_->unit(); }

private:
    // One of the two: a forked child (core_ and call_), or an executed one (exec_).
    std::optional<detail::ProcessCore> core_;
    std::function<R()> call_;
    std::unique_ptr<detail::ExecRun<R>> exec_;
};

template <class F, class... Args>
    requires(!std::same_as<std::remove_cvref_t<F>, ProcessOptions>)
TransientUnitProcess(Properties, F&&, Args&&...)
    -> TransientUnitProcess<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>>;

template <class F, class... Args>
TransientUnitProcess(Properties, ProcessOptions, F&&, Args&&...)
    -> TransientUnitProcess<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>>;

template <class F, class... Args>
TransientUnitProcess(exec_tag, Properties, F&&, Args&&...)
    -> TransientUnitProcess<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&&...>>;

template <class F, class... Args>
TransientUnitProcess(exec_tag, Properties, ProcessOptions, F&&, Args&&...)
    -> TransientUnitProcess<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&&...>>;

// Runs f(args...) in a transient unit of its own and returns its value or rethrows its exception. The unit
// is gone when this returns.
template <class F, class... Args>
auto run(Properties properties, F&& f, Args&&... args) {
    TransientUnitProcess process(std::move(properties), std::forward<F>(f), std::forward<Args>(args)...);
    process.start();
    return process.result();
}

}  // namespace sdfutures
