#pragma once
// The benchmark's driver side: configuration, sample statistics, the result table and number formatting.
// Nothing here touches systemd or sdfutures.

#include <chrono>
#include <cstddef>
#include <functional>
#include <iosfwd>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline double seconds_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

struct Config {
    bool short_mode = false;
    int reps = 7;
    std::set<int> only;  // figures to run; empty: all
    bool show_samples = false;

    std::size_t tasks = 100'000;           // trivial tasks per throughput sample
    std::size_t latency_calls = 2'000;     // submit→get round trips per latency sample
    std::size_t big_bytes = 64u << 20;     // the "64 MiB" result
    double quota_seconds = 5.0;            // wall time of each CPU quota sample
    std::size_t python_tasks = 10'000;     // trivial tasks per Python throughput sample
    std::size_t chunked_tasks = 1'000'000;  // trivial tasks of a chunked map (chunksize n/8), both sides
    std::size_t big_owner_bytes = 1u << 30;  // the large owner of figure 6 (0: skipped)
    std::size_t pool_sizes_max = 8;
    std::optional<std::chrono::microseconds> dispatcher_spin;  // --spin-us: the pools' spin, for A/B runs

    bool wants(int figure) const { return only.empty() || only.count(figure) != 0; }
};

double median(std::vector<double> values);
double quantile(std::vector<double> values, double q);

// Runs the measurements in turn, each once for warm-up (discarded) and then `reps` times, rotating which goes
// first on every repetition, so that drift in the machine's load lands on both sides of a ratio alike.
std::vector<std::vector<double>> interleave(int reps, const std::vector<std::function<double()>>& measurements);
std::pair<std::vector<double>, std::vector<double>> interleave(int reps, const std::function<double()>& a,
                                                               const std::function<double()>& b);
std::vector<double> repeat(int reps, const std::function<double()>& f, bool warm_up = true);

enum class Verdict { info, ok, miss };

struct Row {
    std::string figure;
    std::string sdfutures;
    std::string floor;
    std::string ratio;
    std::string target;
    Verdict verdict = Verdict::info;
};

class Report {
public:
    void add(Row row);
    // Raw samples, printed with --samples, and the breakdown lines printed after the table.
    void samples(const std::string& name, const std::vector<double>& values, const std::string& unit);
    void note(const std::string& line);
    void print_table(std::ostream& out) const;
    void print_notes(std::ostream& out, bool with_samples) const;
    std::size_t misses() const;

    // Medians other figures reuse (figure 7 compares Python with figures 2 and 3).
    std::map<std::string, double> medians;

private:
    std::vector<Row> rows_;
    std::vector<std::string> notes_;
    std::vector<std::string> sample_lines_;
};

// "12.3 ms", "85.1 µs", "1.52 s"
std::string format_time(double seconds);
// "152 k/s"
std::string format_rate(double per_second);
// "2.31 GiB/s"
std::string format_bandwidth(double bytes_per_second);
// "1.84 MiB"
std::string format_bytes(double bytes);
// "1.26x"
std::string format_ratio(double ratio);
std::string format_percent(double fraction);  // "61.2%"

// The machine the run happened on, for the report header.
std::vector<std::pair<std::string, std::string>> machine_description();

}  // namespace bench
