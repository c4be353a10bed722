#pragma once
// The physical floors every sdfutures figure is compared with: the same work done with raw calls only
// (sdbus-c++, fork, pipes and socketpairs), no sdfutures code. Each floor does the minimum a correct
// implementation of that figure must do, and nothing the library adds for safety or diagnostics.

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace sdbus {
class IConnection;
class IProxy;
}  // namespace sdbus

namespace bench {

// A minimal systemd Manager client on sdbus-c++: one connection, subscribed, with JobRemoved and UnitRemoved
// recorded for the floor's own units only (named by floor_unit_name()).
class RawSystemd {
public:
    // `spec` as in SDFUTURES_BUS: "system", "user" or a D-Bus address.
    explicit RawSystemd(const std::string& spec);
    ~RawSystemd();
    RawSystemd(const RawSystemd&) = delete;
    RawSystemd& operator=(const RawSystemd&) = delete;

    std::string version();
    // StartTransientUnit of the service kind sdfutures uses: Type=exec, ExecStart=cat reading `anchor_read_fd`,
    // Delegate=yes, CollectMode=inactive-or-failed. Returns the job path (the job itself still runs).
    std::string start_anchored_service(const std::string& unit, int anchor_read_fd);
    // Dispatches signals until the job has been removed; returns its result ("done", ...).
    std::string wait_job(const std::string& job);
    void attach(const std::string& unit, const std::vector<uint32_t>& pids);
    std::string stop(const std::string& unit);  // StopUnit, mode replace; returns the job path
    void wait_removed(const std::string& unit);  // until UnitRemoved for it was seen

private:
    void dispatch_until(const std::function<bool()>& done);

    std::unique_ptr<sdbus::IConnection> connection_;
    std::unique_ptr<sdbus::IProxy> manager_;
    std::map<std::string, std::string> finished_jobs_;
    std::set<std::string> removed_units_;
};

// "sdfutures-floor-<pid>-<n>.service"
std::string floor_unit_name();

// Forked children that answer fixed-size requests on socketpairs: request x, reply x + 1. A child reads all
// requests that have arrived and answers them with one write.
class RawWorkers {
public:
    explicit RawWorkers(std::size_t count);
    ~RawWorkers();
    RawWorkers(const RawWorkers&) = delete;
    RawWorkers& operator=(const RawWorkers&) = delete;

    // `tasks` requests spread over the workers with at most `window` outstanding per worker (1: ping-pong);
    // returns the elapsed seconds.
    double run(std::size_t tasks, std::size_t window);
    // Median of `calls` single request→reply round trips with worker 0, in seconds.
    std::vector<double> round_trips(std::size_t calls);  // each round trip's time, s
    const std::vector<pid_t>& pids() const { return pids_; }

private:
    std::vector<pid_t> pids_;
    std::vector<int> sockets_;
};

// A forked child holding `bytes` of data that it sends whole on request, through a socketpair or a pipe; the
// parent receives into freshly allocated (not yet faulted) memory, as any new result must be.
class RawSender {
public:
    RawSender(const char* data, std::size_t bytes, bool through_pipe);
    ~RawSender();
    RawSender(const RawSender&) = delete;
    RawSender& operator=(const RawSender&) = delete;
    // Seconds from the request to the last byte received. huge_pages: the destination is mapped with
    // MADV_HUGEPAGE (what a receiver could do under THP "madvise" mode) instead of plain fresh memory.
    double transfer(bool huge_pages = false);

private:
    std::size_t bytes_;
    pid_t pid_ = -1;
    int request_fd_ = -1;
    int data_fd_ = -1;
};

// Pool readiness, raw: StartTransientUnit, fork `workers` children while the job runs, wait for the job,
// ONE AttachProcessesToUnit with every pid, then one round trip with each child. Seconds; the unit is gone
// (untimed) before it returns. `shared` null: the floor opens its own connection to `spec` (timed) and closes
// it after the clock stopped, as a pool that made its own Bus does.
double floor_pool_ready(RawSystemd* shared, const std::string& spec, std::size_t workers);

// run() raw: StartTransientUnit, fork, wait for the job, attach, release the child, read its one-byte result,
// reap it, StopUnit and wait for the stop job and for UnitRemoved. Seconds. `shared` null: opens and closes its
// own connection to `spec`, both timed, as run() does. stop_job false: a variant that ends the unit by closing
// cat's stdin instead (no stop job), for comparison.
double floor_process(RawSystemd* shared, const std::string& spec, bool stop_job = true);

}  // namespace bench
