#pragma once
// Errors carry the exit code the CLI should use: a user error (bad input, bad option, a corrupt file) exits 1,
// an internal error (a bug, an impossible state) exits 2. Messages are one line and name the file/tensor/option.
#include <stdexcept>
#include <string>

namespace kestrel {

class Error : public std::runtime_error {
 public:
  enum class Kind { User, Internal };
  explicit Error(const std::string& what, Kind kind = Kind::User) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }
  int exit_code() const { return kind_ == Kind::User ? 1 : 2; }

 private:
  Kind kind_;
};

// A problem with what the user gave us: a file, an option, a prompt.
[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg, Error::Kind::User); }
// A broken invariant inside Kestrel.
[[noreturn]] inline void internal_error(const std::string& msg) { throw Error(msg, Error::Kind::Internal); }

#define KESTREL_CHECK(cond, msg)                 \
  do {                                           \
    if (!(cond)) ::kestrel::fail(msg);           \
  } while (0)

}  // namespace kestrel
