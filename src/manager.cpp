#include "sdfutures/manager.hpp"

#include <charconv>

#include "bus_state.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures {

using detail::kManagerInterface;

PendingJob::PendingJob(Bus bus, std::string unit, std::string type, std::string path)
    : bus_(std::move(bus)), unit_(std::move(unit)), type_(std::move(type)), path_(std::move(path)) {}

PendingJob::PendingJob(PendingJob&& other) noexcept
    : bus_(std::move(other.bus_)), unit_(std::move(other.unit_)), type_(std::move(other.type_)),
      path_(std::move(other.path_)), waited_(other.waited_) {
    other.waited_ = true;
}

PendingJob& PendingJob::operator=(PendingJob&& other) noexcept {
    if (this != &other) {
        bus_ = other.bus_;
        unit_ = std::move(other.unit_);
        type_ = std::move(other.type_);
        path_ = std::move(other.path_);
        waited_ = other.waited_;
        other.waited_ = true;
    }
    return *this;
}

PendingJob::~PendingJob() {
    if (waited_) return;
    // Abandoned without waiting: stop tracking it, or its entry would stay in the awaited set forever.
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.awaited_jobs.erase(path_);
}

std::optional<std::string> PendingJob::wait_result(std::optional<std::chrono::milliseconds> timeout) {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    auto it = state.awaited_jobs.find(path_);
    if (it == state.awaited_jobs.end()) throw StateError("job " + path_ + " was already waited for");
    bool finished = state.dispatch_until([&] { return it->second.has_value(); }, detail::deadline_after(timeout));
    if (!finished) return std::nullopt;
    std::string result = *it->second;
    state.awaited_jobs.erase(it);
    waited_ = true;
    return result;
}

void PendingJob::wait(std::optional<std::chrono::milliseconds> timeout) {
    auto result = wait_result(timeout);
    if (!result) throw JobFailed(unit_, type_, "not finished in time");
    if (*result != "done") throw JobFailed(unit_, type_, *result);
}

Manager::Manager(Bus bus) : bus_(std::move(bus)) {}

std::string Manager::version() const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    return detail::translate_errors("Get Version", [&] {
        return state.manager->getProperty("Version").onInterface(kManagerInterface).get<std::string>();
    });
}

unsigned Manager::version_major() const {
    std::string v = version();
    unsigned major = 0;
    std::from_chars(v.data(), v.data() + v.size(), major);
    return major;
}

namespace {

// Sends a job-producing call with its job registered as awaited before the reply can be dispatched.
template <class Call>
PendingJob enqueue_job(const Bus& bus, const std::string& unit, const std::string& type, const std::string& what,
                       Call&& call) {
    auto& state = detail::state_of(bus);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    // The JobRemoved match was installed when the bus was opened, and signals that arrive while the call
    // waits for its reply are queued, not dispatched, so the job's end cannot be missed.
    sdbus::ObjectPath job = detail::translate_errors(what, [&] { return call(*state.manager); });
    state.awaited_jobs.emplace(job, std::nullopt);
    return PendingJob(bus, unit, type, job);
}

}  // namespace

PendingJob Manager::start_transient_unit_async(const std::string& name, const Properties& properties,
                                               std::vector<DbusProperty> extra, const std::string& mode,
                                               const std::vector<AuxiliaryUnit>& aux) {
    auto props = properties.to_dbus();  // throws PropertyError before anything is sent
    props.insert(props.end(), std::make_move_iterator(extra.begin()), std::make_move_iterator(extra.end()));
    std::vector<sdbus::Struct<std::string, std::vector<DbusProperty>>> aux_units;
    aux_units.reserve(aux.size());
    for (const auto& unit : aux) aux_units.emplace_back(unit.name, unit.properties.to_dbus());
    return enqueue_job(bus_, name, "start", "StartTransientUnit " + name, [&](sdbus::IProxy& manager) {
        sdbus::ObjectPath job;
        manager.callMethod("StartTransientUnit").onInterface(kManagerInterface)
            .withArguments(name, mode, props, aux_units).storeResultsTo(job);
        return job;
    });
}

Unit Manager::start_transient_unit(const std::string& name, const Properties& properties,
                                   std::vector<DbusProperty> extra, const std::string& mode,
                                   const std::vector<AuxiliaryUnit>& aux) {
    start_transient_unit_async(name, properties, std::move(extra), mode, aux).wait();
    return Unit(bus_, name);
}

PendingJob Manager::stop_unit_async(const std::string& name, const std::string& mode) {
    return enqueue_job(bus_, name, "stop", "StopUnit " + name, [&](sdbus::IProxy& manager) {
        sdbus::ObjectPath job;
        manager.callMethod("StopUnit").onInterface(kManagerInterface).withArguments(name, mode).storeResultsTo(job);
        return job;
    });
}

void Manager::stop_unit(const std::string& name, const std::string& mode) { stop_unit_async(name, mode).wait(); }

void Manager::reset_failed_unit(const std::string& name) {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::translate_errors("ResetFailedUnit " + name, [&] {
        state.manager->callMethod("ResetFailedUnit").onInterface(kManagerInterface).withArguments(name);
    });
}

void Manager::kill_unit(const std::string& name, int signal, const std::string& whom) {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::translate_errors("KillUnit " + name, [&] {
        state.manager->callMethod("KillUnit").onInterface(kManagerInterface).withArguments(name, whom, int32_t{signal});
    });
}

bool Manager::wait_unit_gone(const std::string& name, std::optional<std::chrono::milliseconds> timeout) {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::RemovalWatch watch(state, name);  // before asking, so a removal in between is still seen
    try {
        sdbus::ObjectPath path;
        state.manager->callMethod("GetUnit").onInterface(kManagerInterface).withArguments(name).storeResultsTo(path);
    } catch (const sdbus::Error& e) {
        if (e.getName() == "org.freedesktop.systemd1.NoSuchUnit") return true;
        detail::throw_systemd_error("GetUnit " + name, e);
    }
    return watch.wait(detail::deadline_after(timeout));
}

void Manager::attach_processes_to_unit(const std::string& name, const std::string& subcgroup,
                                       const std::vector<uint32_t>& pids) {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::translate_errors("AttachProcessesToUnit " + name, [&] {
        state.manager->callMethod("AttachProcessesToUnit").onInterface(kManagerInterface).withArguments(name, subcgroup, pids);
    });
}

Unit Manager::get_unit(const std::string& name) const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::translate_errors("GetUnit " + name, [&] {
        sdbus::ObjectPath path;
        state.manager->callMethod("GetUnit").onInterface(kManagerInterface).withArguments(name).storeResultsTo(path);
    });
    return Unit(bus_, name);
}

bool Manager::unit_loaded(const std::string& name) const {
    try {
        get_unit(name);
        return true;
    } catch (const SystemdError& e) {
        if (e.name() == "org.freedesktop.systemd1.NoSuchUnit") return false;
        throw;
    }
}

Unit Manager::load_unit(const std::string& name) const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    detail::translate_errors("LoadUnit " + name, [&] {
        sdbus::ObjectPath path;
        state.manager->callMethod("LoadUnit").onInterface(kManagerInterface).withArguments(name).storeResultsTo(path);
    });
    return Unit(bus_, name);
}

Unit Manager::get_unit_by_pid(uint32_t pid) const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    sdbus::ObjectPath path = detail::translate_errors("GetUnitByPID " + std::to_string(pid), [&] {
        sdbus::ObjectPath p;
        state.manager->callMethod("GetUnitByPID").onInterface(kManagerInterface).withArguments(pid).storeResultsTo(p);
        return p;
    });
    return Unit(bus_, unit_name_from_object_path(path));
}

std::vector<UnitProcess> Manager::get_unit_processes(const std::string& name) const {
    return Unit(bus_, name).processes();
}

std::vector<UnitInfo> Manager::list_units() const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    using Row = sdbus::Struct<std::string, std::string, std::string, std::string, std::string, std::string,
                              sdbus::ObjectPath, uint32_t, std::string, sdbus::ObjectPath>;
    std::vector<Row> rows = detail::translate_errors("ListUnits", [&] {
        std::vector<Row> r;
        state.manager->callMethod("ListUnits").onInterface(kManagerInterface).storeResultsTo(r);
        return r;
    });
    std::vector<UnitInfo> out;
    out.reserve(rows.size());
    for (auto& r : rows)
        out.push_back(UnitInfo{r.get<0>(), r.get<1>(), r.get<2>(), r.get<3>(), r.get<4>(), r.get<5>(), r.get<6>()});
    return out;
}

}  // namespace sdfutures
