#pragma once
// KESTREL_* tuning and debug switches read from the environment, one way everywhere (CUDA kernels' launch
// choices, the CUDA session's plan). They exist for measurements and tests; defaults never need them.
#include <cstdint>
#include <cstdlib>
#include <string>

namespace kestrel {

// A three-way switch: "1" forces a feature on, "0" off; unset (or any other value) leaves the default.
enum class EnvSwitch { Default, On, Off };

inline EnvSwitch env_switch(const char* name) {
  const char* v = std::getenv(name);
  const std::string s = v ? v : "";
  return s == "1" ? EnvSwitch::On : s == "0" ? EnvSwitch::Off : EnvSwitch::Default;
}

// Whether `name` is set to something other than "" or "0" (KESTREL_NO_PDL=yes counts).
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

// The integer `name` holds; 0 when it is unset or does not start with a number.
inline int64_t env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? int64_t(std::atoll(v)) : 0;
}

}  // namespace kestrel
