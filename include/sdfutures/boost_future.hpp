#pragma once
// boost::future results for pool tasks, so that Boost.Thread's composition works on them: .then(),
// boost::when_all(), boost::when_any(), boost::wait_for_any().
//
//     boost::future<int> f = sdfutures::boost_submit(pool, &work, 7);
//     boost::future<int> g = f.then([](boost::future<int> r) { return r.get() * 2; });
//
// Link the CMake target sdfutures::boost (built when Boost.Thread is found; Debian: libboost-thread-dev). It
// sets BOOST_THREAD_VERSION=5 for everything that links it, which gives Boost.Thread's futures their
// continuations and when_all/when_any (BOOST_THREAD_PROVIDES_FUTURE_CONTINUATION,
// BOOST_THREAD_PROVIDES_FUTURE_WHEN_ALL_WHEN_ANY). Boost.Thread's configuration must be one per program: a
// translation unit that includes Boost.Thread with another BOOST_THREAD_VERSION must not be linked with it.
// The core library (sdfutures::sdfutures) does not use Boost.Thread.
//
// The boost::future is fulfilled by the pool's dispatcher, through Task::on_done(), right after the task's own
// future became ready; a continuation Boost runs inline (boost::launch::sync) therefore runs on that thread,
// and must be as short as an on_done callback. Exceptions cross over as themselves: boost::future::get()
// rethrows the very exception the task's std::future holds (ProcessDied, TaskTimeout, the task's own).

#include <boost/thread/future.hpp>

#include <exception>
#include <memory>
#include <type_traits>
#include <utility>

#include "sdfutures/pool.hpp"

#if !defined(BOOST_THREAD_PROVIDES_FUTURE_CONTINUATION) || !defined(BOOST_THREAD_PROVIDES_FUTURE_WHEN_ALL_WHEN_ANY)
#error "sdfutures/boost_future.hpp needs BOOST_THREAD_VERSION >= 4 (link sdfutures::boost, which sets it to 5)"
#endif
#if defined(BOOST_NO_CXX11_HDR_EXCEPTION)
#error "sdfutures/boost_future.hpp needs Boost.Exception built with std::exception_ptr support"
#endif

namespace sdfutures {

namespace detail {

// boost::current_exception() would slice the exception to the standard base it knows (a ProcessDied to
// std::runtime_error). Boost rethrows a std::exception_ptr wrapped this way as it is (Boost.Exception's own
// lossless path for exceptions it cannot clone), so the type and what() survive.
inline boost::exception_ptr to_boost_exception_ptr(std::exception_ptr error) {
    return boost::copy_exception(boost::exception_detail::std_exception_ptr_wrapper(std::move(error)));
}

}  // namespace detail

// The task's result as a boost::future. Takes the task's std::future (task.future() is empty afterwards); the
// task itself can still be cancelled, and its done()/running() still answer.
template <class R>
boost::future<R> to_boost_future(Task<R>& task) {
    auto promise = std::make_shared<boost::promise<R>>();
    boost::future<R> result = promise->get_future();
    auto future = std::make_shared<std::future<R>>(task.take_future());
    task.on_done([promise, future] {
        try {
            if constexpr (std::is_void_v<R>) {
                future->get();
                promise->set_value();
            } else {
                promise->set_value(future->get());
            }
        } catch (...) {
            promise->set_exception(detail::to_boost_exception_ptr(std::current_exception()));
        }
    });
    return result;
}

// pool.schedule(f, args...) with the result as a boost::future (the task cannot be cancelled through it: use
// schedule() and to_boost_future() to keep the Task).
template <class F, class... Args>
auto boost_submit(TransientUnitPoolExecutor& pool, F&& f, Args&&... args) {
    auto task = pool.schedule(std::forward<F>(f), std::forward<Args>(args)...);
    return to_boost_future(task);
}

}  // namespace sdfutures
