#include "pool_bus.hpp"

#include "anchored_unit.hpp"

#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures::detail {

PoolBus::PoolBus(Bus bus, std::string unit, std::function<void()> wake)
    : bus_(std::move(bus)), unit_(std::move(unit)), wake_(std::move(wake)), thread_([this] { serve(); }) {}

PoolBus::~PoolBus() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    requested_.notify_all();
    thread_.join();
}

void PoolBus::attach(pid_t pid) {
    {
        std::lock_guard lock(mutex_);
        requests_.push_back({Answer::Kind::attached, pid});
    }
    requested_.notify_one();
}

void PoolBus::ask_unit_state(pid_t pid) {
    {
        std::lock_guard lock(mutex_);
        requests_.push_back({Answer::Kind::unit_state, pid});
    }
    requested_.notify_one();
}

std::vector<PoolBus::Answer> PoolBus::take_answers() {
    std::lock_guard lock(mutex_);
    return std::exchange(answers_, {});
}

bool PoolBus::unit_gone() const { return manager_says_unit_stopped(bus_, unit_); }

void PoolBus::serve() {
    for (;;) {
        Request request{};
        {
            std::unique_lock lock(mutex_);
            requested_.wait(lock, [&] { return stopping_ || !requests_.empty(); });
            if (stopping_) return;
            request = requests_.front();
            requests_.pop_front();
        }
        Answer answer{request.kind, request.pid};
        if (request.kind == Answer::Kind::attached) {
            try {
                Manager(bus_).attach_processes_to_unit(unit_, "/", {static_cast<uint32_t>(request.pid)});
            } catch (...) {
                answer.kind = Answer::Kind::attach_failed;
                answer.error = std::current_exception();
                answer.unit_gone = unit_gone();
            }
        } else {
            answer.unit_gone = unit_gone();
        }
        {
            std::lock_guard lock(mutex_);
            answers_.push_back(std::move(answer));
        }
        wake_();
    }
}

}  // namespace sdfutures::detail
