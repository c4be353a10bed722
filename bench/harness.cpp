#include "harness.hpp"

#include <sched.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace bench {

double median(std::vector<double> values) { return quantile(std::move(values), 0.5); }

double quantile(std::vector<double> values, double q) {
    if (values.empty()) return std::nan("");
    std::sort(values.begin(), values.end());
    // Linear interpolation between closest ranks, so the median of an even count is the mean of the middle two.
    double pos = q * static_cast<double>(values.size() - 1);
    auto lo = static_cast<std::size_t>(std::floor(pos));
    auto hi = static_cast<std::size_t>(std::ceil(pos));
    return values[lo] + (values[hi] - values[lo]) * (pos - static_cast<double>(lo));
}

std::vector<std::vector<double>> interleave(int reps, const std::vector<std::function<double()>>& measurements) {
    const std::size_t n = measurements.size();
    for (auto& m : measurements) m();
    std::vector<std::vector<double>> out(n);
    for (int r = 0; r < reps; ++r) {
        for (std::size_t k = 0; k < n; ++k) {
            std::size_t i = (static_cast<std::size_t>(r) + k) % n;
            out[i].push_back(measurements[i]());
        }
    }
    return out;
}

std::pair<std::vector<double>, std::vector<double>> interleave(int reps, const std::function<double()>& a,
                                                               const std::function<double()>& b) {
    auto both = interleave(reps, std::vector<std::function<double()>>{a, b});
    return {both[0], both[1]};
}

std::vector<double> repeat(int reps, const std::function<double()>& f, bool warm_up) {
    if (warm_up) f();
    std::vector<double> out;
    for (int i = 0; i < reps; ++i) out.push_back(f());
    return out;
}

void Report::add(Row row) { rows_.push_back(std::move(row)); }

void Report::samples(const std::string& name, const std::vector<double>& values, const std::string& unit) {
    std::ostringstream line;
    line << "  " << name << " [" << unit << "]:";
    for (double v : values) line << ' ' << std::setprecision(5) << v;
    sample_lines_.push_back(line.str());
}

void Report::note(const std::string& line) { notes_.push_back(line); }

std::size_t Report::misses() const {
    return static_cast<std::size_t>(std::count_if(rows_.begin(), rows_.end(), [](const Row& r) {
        return r.verdict == Verdict::miss;
    }));
}

namespace {

// Display width of UTF-8 text: continuation bytes take no column ("µ" is two bytes, one column).
std::size_t display_width(const std::string& s) {
    return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) {
        return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }));
}

std::string pad(const std::string& s, std::size_t width) {
    std::size_t w = display_width(s);
    return w >= width ? s : s + std::string(width - w, ' ');
}

const char* verdict_text(Verdict v) {
    switch (v) {
        case Verdict::ok: return "ok";
        case Verdict::miss: return "MISS";
        case Verdict::info: return "";
    }
    return "";
}

std::string fixed(double v, int digits) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(digits) << v;
    return s.str();
}

// Three significant digits, the precision a median of a handful of noisy samples deserves.
std::string three_digits(double v) {
    double a = std::fabs(v);
    return fixed(v, a >= 100 ? 0 : a >= 10 ? 1 : 2);
}

}  // namespace

void Report::print_table(std::ostream& out) const {
    const std::vector<std::string> head{"figure", "sdfutures", "floor", "ratio", "target", "verdict"};
    std::vector<std::size_t> width;
    for (auto& h : head) width.push_back(display_width(h));
    for (auto& r : rows_) {
        const std::string* cells[] = {&r.figure, &r.sdfutures, &r.floor, &r.ratio, &r.target};
        for (std::size_t i = 0; i < 5; ++i) width[i] = std::max(width[i], display_width(*cells[i]));
    }
    auto line = [&](const std::vector<std::string>& cells) {
        std::string s = "| ";
        for (std::size_t i = 0; i < cells.size(); ++i) s += pad(cells[i], width[i]) + " | ";
        s.pop_back();
        out << s << '\n';
    };
    line(head);
    std::string rule = "|";
    for (std::size_t w : width) rule += std::string(w + 2, '-') + "|";
    out << rule << '\n';
    for (auto& r : rows_) line({r.figure, r.sdfutures, r.floor, r.ratio, r.target, verdict_text(r.verdict)});
}

void Report::print_notes(std::ostream& out, bool with_samples) const {
    if (!notes_.empty()) {
        out << "\nBreakdown and notes:\n";
        for (auto& n : notes_) out << "  " << n << '\n';
    }
    if (with_samples && !sample_lines_.empty()) {
        out << "\nSamples (in measurement order):\n";
        for (auto& s : sample_lines_) out << s << '\n';
    }
}

std::string format_time(double seconds) {
    if (!std::isfinite(seconds)) return "n/a";
    if (seconds >= 1) return three_digits(seconds) + " s";
    if (seconds >= 1e-3) return three_digits(seconds * 1e3) + " ms";
    return three_digits(seconds * 1e6) + " µs";
}

std::string format_rate(double per_second) {
    if (!std::isfinite(per_second)) return "n/a";
    if (per_second >= 1e6) return three_digits(per_second / 1e6) + " M/s";
    if (per_second >= 1e3) return three_digits(per_second / 1e3) + " k/s";
    return three_digits(per_second) + " /s";
}

std::string format_bandwidth(double bytes_per_second) {
    if (!std::isfinite(bytes_per_second)) return "n/a";
    double gib = bytes_per_second / double(1u << 30);
    if (gib >= 1) return three_digits(gib) + " GiB/s";
    return three_digits(bytes_per_second / double(1u << 20)) + " MiB/s";
}

std::string format_bytes(double bytes) {
    if (!std::isfinite(bytes)) return "n/a";
    if (bytes >= double(1u << 30)) return three_digits(bytes / double(1u << 30)) + " GiB";
    if (bytes >= double(1u << 20)) return three_digits(bytes / double(1u << 20)) + " MiB";
    return three_digits(bytes / 1024.0) + " KiB";
}

std::string format_ratio(double ratio) { return std::isfinite(ratio) ? fixed(ratio, 2) + "x" : "n/a"; }

std::string format_percent(double fraction) {
    return std::isfinite(fraction) ? fixed(fraction * 100, 1) + "%" : "n/a";
}

namespace {

std::string first_line_with(const std::string& path, const std::string& key) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(key, 0) != 0) continue;
        auto colon = line.find(':');
        std::string value = colon == std::string::npos ? line : line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        return value;
    }
    return "?";
}

std::string cgroup_layout() {
    std::ifstream mounts("/proc/mounts");
    std::string dev, mnt, type, opts, rest;
    std::vector<std::string> v1;
    std::string v2;
    while (mounts >> dev >> mnt >> type >> opts && std::getline(mounts, rest)) {
        if (type == "cgroup") {
            std::string name = mnt.substr(mnt.rfind('/') + 1);
            v1.push_back(name);
        } else if (type == "cgroup2") {
            v2 = mnt;
        }
    }
    std::string text;
    if (!v1.empty()) {
        text = "cgroup v1 (";
        for (std::size_t i = 0; i < v1.size(); ++i) text += (i ? " " : "") + v1[i];
        text += ")";
    }
    if (!v2.empty()) text += (text.empty() ? "cgroup v2 at " : " + cgroup v2 at ") + v2;
    if (!v1.empty() && !v2.empty()) text = "hybrid: " + text;
    return text.empty() ? "none mounted" : text;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> machine_description() {
    std::vector<std::pair<std::string, std::string>> d;
    cpu_set_t set;
    std::string cpus = std::to_string(std::thread::hardware_concurrency());
    if (::sched_getaffinity(0, sizeof set, &set) == 0) cpus += " (" + std::to_string(CPU_COUNT(&set)) + " usable)";
    d.emplace_back("CPUs (nproc)", cpus);
    d.emplace_back("CPU model", first_line_with("/proc/cpuinfo", "model name"));
    utsname u{};
    ::uname(&u);
    d.emplace_back("kernel", std::string(u.release) + " " + u.version);
    d.emplace_back("memory", first_line_with("/proc/meminfo", "MemTotal"));
    d.emplace_back("PID 1", first_line_with("/proc/1/status", "Name"));
    d.emplace_back("cgroups", cgroup_layout());
    std::ifstream load("/proc/loadavg");
    std::string l1, l5, l15;
    load >> l1 >> l5 >> l15;
    d.emplace_back("load average at start", l1 + " " + l5 + " " + l15);
    return d;
}

}  // namespace bench
