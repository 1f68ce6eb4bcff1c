// core/env.h: how KESTREL_* switches, flags and numbers read the environment.
#include "core/env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace {

constexpr const char* kName = "KESTREL_ENV_TEST_VARIABLE";

// Sets kName for one test (nullptr: unset) and unsets it afterwards.
struct ScopedEnv {
  explicit ScopedEnv(const char* value) {
    if (value)
      ::setenv(kName, value, 1);
    else
      ::unsetenv(kName);
  }
  ~ScopedEnv() { ::unsetenv(kName); }
};

using kestrel::EnvSwitch;

TEST(EnvSwitch, OneForcesOnZeroForcesOffAnythingElseLeavesTheDefault) {
  for (auto [value, expected] : {std::pair<const char*, EnvSwitch>{nullptr, EnvSwitch::Default},
                                 {"", EnvSwitch::Default},
                                 {"1", EnvSwitch::On},
                                 {"0", EnvSwitch::Off},
                                 {"yes", EnvSwitch::Default},
                                 {"10", EnvSwitch::Default}}) {
    ScopedEnv env(value);
    EXPECT_EQ(kestrel::env_switch(kName), expected) << (value ? value : "(unset)");
  }
}

TEST(EnvFlag, AnyValueButEmptyOrZeroIsSet) {
  for (auto [value, expected] : {std::pair<const char*, bool>{nullptr, false},
                                 {"", false},
                                 {"0", false},
                                 {"1", true},
                                 {"yes", true}}) {
    ScopedEnv env(value);
    EXPECT_EQ(kestrel::env_flag(kName), expected) << (value ? value : "(unset)");
  }
}

TEST(EnvInt, LeadingNumberOrZero) {
  for (auto [value, expected] : {std::pair<const char*, int64_t>{nullptr, 0},
                                 {"", 0},
                                 {"96", 96},
                                 {"-3", -3},
                                 {"12kb", 12},
                                 {"many", 0}}) {
    ScopedEnv env(value);
    EXPECT_EQ(kestrel::env_int(kName), expected) << (value ? value : "(unset)");
  }
}

}  // namespace
