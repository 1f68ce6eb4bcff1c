#pragma once
// A progress report on stderr for long jobs (downloads, engine builds).
//  - stderr is a terminal: one line redrawn in place, "label  12.3 MiB / 48.0 MiB  25%  8.1 MiB/s", at most
//    ten times a second;
//  - stderr is a file or pipe (logs, CI): a single summary line when the job finishes, so logs stay readable;
//  - quiet: nothing.
#include <chrono>
#include <cstdint>
#include <string>

namespace kestrel {

class Progress {
 public:
  enum class Unit { Bytes, Items };
  enum class Style { Auto, Bar, Summary, Quiet };  // Auto: Bar on a terminal, Summary otherwise

  // total 0 means unknown (no percentage). `done` starts above 0 when a job resumes.
  Progress(std::string label, uint64_t total, Unit unit = Unit::Bytes, Style style = Style::Auto,
           uint64_t done = 0);
  ~Progress();  // finishes the line if finish() was not called (e.g. on an exception), without a summary
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void set_total(uint64_t total) { total_ = total; }
  void update(uint64_t done);  // absolute amount done so far
  void reset(uint64_t done);   // a job restarted from `done` (e.g. a server ignored a resume request)
  void finish();               // prints the final line (Bar or Summary)
  // A message about the job (e.g. "retrying"), on its own line: the bar is cleared first and redrawn on the
  // next update. Nothing when quiet.
  void note(const std::string& message);

  // "1.50 MiB" for bytes, "1234" for items; exposed for tests and other reports.
  static std::string format_amount(uint64_t n, Unit unit);
  // "label  12.3 MiB / 48.0 MiB   25%  8.1 MiB/s": the line drawn for a state (total 0: no size or
  // percentage; rate < 0: no rate). Exposed so tests can check it without a terminal.
  static std::string format_line(const std::string& label, uint64_t done, uint64_t total, double rate,
                                 Unit unit);

 private:
  void draw(bool final);
  using Clock = std::chrono::steady_clock;
  std::string label_;
  uint64_t total_, done_, start_done_;
  Unit unit_;
  Style style_;
  Clock::time_point start_, last_draw_;
  bool drawn_ = false, finished_ = false;
};

}  // namespace kestrel
