#include "core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

namespace kestrel {

namespace {

Progress::Style resolve_style(Progress::Style s) {
  if (s != Progress::Style::Auto) return s;
  return ::isatty(STDERR_FILENO) ? Progress::Style::Bar : Progress::Style::Summary;
}

}  // namespace

Progress::Progress(std::string label, uint64_t total, Unit unit, Style style, uint64_t done)
    : label_(std::move(label)),
      total_(total),
      done_(done),
      start_done_(done),
      unit_(unit),
      style_(resolve_style(style)),
      start_(Clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  // An abandoned bar (an exception mid-job) must not leave the cursor mid-line before the error message.
  if (drawn_ && !finished_) std::fputc('\n', stderr);
}

void Progress::update(uint64_t done) {
  done_ = done;
  if (style_ != Style::Bar) return;
  const auto now = Clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;  // redrawing faster only flickers
  last_draw_ = now;
  draw(false);
}

void Progress::reset(uint64_t done) {
  done_ = start_done_ = done;
  start_ = Clock::now();
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (style_ == Style::Bar || style_ == Style::Summary) draw(true);
}

void Progress::note(const std::string& message) {
  if (style_ == Style::Quiet) return;
  if (style_ == Style::Bar && drawn_) std::fputs("\r\033[K", stderr);
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  drawn_ = false;  // the next update redraws at once
}

void Progress::draw(bool final) {
  const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
  // The rate counts only this run's work, so a resumed download does not report an inflated speed.
  const double rate = secs > 0.05 && done_ >= start_done_ ? double(done_ - start_done_) / secs : -1;
  std::string line = format_line(label_, done_, total_, rate, unit_);
  if (final) {
    char t[32];
    std::snprintf(t, sizeof t, "  in %.1fs", secs);
    line += t;
    if (start_done_ > 0) line += " (resumed at " + format_amount(start_done_, unit_) + ")";
  }
  if (style_ == Style::Bar)
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");  // redraw in place
  else
    std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

std::string Progress::format_amount(uint64_t n, Unit unit) {
  char buf[32];
  if (unit == Unit::Items) {
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
    return buf;
  }
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string Progress::format_line(const std::string& label, uint64_t done, uint64_t total, double rate,
                                  Unit unit) {
  std::string line = label + "  " + format_amount(done, unit);
  if (total > 0) {
    char pct[16];
    std::snprintf(pct, sizeof pct, "  %3d%%", int(done >= total ? 100 : done * 100 / total));
    line += " / " + format_amount(total, unit) + pct;
  }
  if (rate >= 0) line += "  " + format_amount(uint64_t(rate), unit) + "/s";
  return line;
}

}  // namespace kestrel
