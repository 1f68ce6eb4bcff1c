// The engine file container: round trip, alignment, and every way a file can be wrong giving a clear error.
#include "io/engine_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"

namespace fs = std::filesystem;
using kestrel::EngineFile;
using kestrel::EngineFileWriter;
using testing::HasSubstr;

namespace {

class EngineFileTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kestrel_engine_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A small engine with two sections and some metadata.
  fs::path write_sample(const std::string& name = "sample.kestrel") {
    const fs::path path = dir_ / name;
    EngineFileWriter w(path);
    w.add_section("config.json", R"({"model_type":"gpt2"})");
    w.begin_section("weights/w");
    const float values[3] = {1.5f, -2.0f, 3.25f};
    w.append(values, sizeof(values));
    w.append(values, sizeof(values));
    w.end_section();
    w.commit({{"hello", "world"}});
    return path;
  }

  std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void write(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
  }
  // The error message of opening `p`, or "" if it opened.
  std::string open_error(const fs::path& p) {
    try {
      EngineFile::open(p);
    } catch (const kestrel::Error& e) {
      EXPECT_EQ(e.exit_code(), 1) << e.what();
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(EngineFileTest, RoundTripsSectionsAndMetadata) {
  const fs::path path = write_sample();
  const EngineFile f = EngineFile::open(path);
  EXPECT_EQ(f.metadata()["hello"], "world");
  EXPECT_EQ(f.section("config.json"), R"({"model_type":"gpt2"})");
  const std::string_view w = f.section("weights/w");
  ASSERT_EQ(w.size(), 6 * sizeof(float));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data()) % kestrel::kSectionAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<const float*>(w.data())[5], 3.25f);
  EXPECT_EQ(f.content_id().size(), 8u);
  EXPECT_TRUE(kestrel::looks_like_engine_file(path));
  EXPECT_THAT(open_error(path), "");
}

TEST_F(EngineFileTest, MissingSectionIsAClearError) {
  const EngineFile f = EngineFile::open(write_sample());
  EXPECT_FALSE(f.has("plan.json"));
  try {
    f.section("plan.json");
    FAIL() << "no error";
  } catch (const kestrel::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no section 'plan.json'"));
  }
}

TEST_F(EngineFileTest, ForeignFileIsRejected) {
  const fs::path p = dir_ / "foreign.kestrel";
  write(p, "PK\x03\x04 this is a zip, not an engine");
  EXPECT_FALSE(kestrel::looks_like_engine_file(p));
  EXPECT_THAT(open_error(p), HasSubstr("not a Kestrel engine file"));
  write(p, "");
  EXPECT_THAT(open_error(p), HasSubstr("not a Kestrel engine file"));
}

TEST_F(EngineFileTest, OtherFormatVersionSaysRebuild) {
  const fs::path p = write_sample();
  std::string bytes = read(p);
  bytes[8] = 99;  // format version field
  write(p, bytes);
  const std::string err = open_error(p);
  EXPECT_THAT(err, HasSubstr("format version 99"));
  EXPECT_THAT(err, HasSubstr("rebuild it with `kestrel build"));
}

TEST_F(EngineFileTest, TruncatedFileAtEveryLengthIsAnError) {
  const fs::path p = write_sample();
  const std::string bytes = read(p);
  const fs::path cut = dir_ / "cut.kestrel";
  for (size_t n = 0; n < bytes.size(); n += 7) {
    write(cut, bytes.substr(0, n));
    const std::string err = open_error(cut);
    EXPECT_FALSE(err.empty()) << "a file cut to " << n << " bytes opened";
    if (n >= 64) {
      EXPECT_THAT(err, HasSubstr("truncated")) << n;
    }
  }
}

TEST_F(EngineFileTest, TrailingBytesAreAnError) {
  const fs::path p = write_sample();
  write(p, read(p) + "x");
  EXPECT_THAT(open_error(p), HasSubstr("trailing bytes"));
}

TEST_F(EngineFileTest, EveryFlippedByteIsCaught) {
  const fs::path p = write_sample();
  const std::string bytes = read(p);
  const fs::path bad = dir_ / "bad.kestrel";
  // Padding between sections is not covered by any checksum; every other byte is.
  const EngineFile good = EngineFile::open(p);
  auto covered = [&](size_t at) {
    if (at < 64) return true;
    for (const auto& [name, s] : good.sections())
      if (at >= s.offset && at < s.offset + s.size) return true;
    return false;
  };
  uint64_t index_offset = 0;  // header field at byte 24
  std::memcpy(&index_offset, bytes.data() + 24, 8);
  int checked = 0;
  for (size_t at = 0; at < bytes.size(); ++at) {
    std::string b = bytes;
    b[at] = char(b[at] ^ 0x5a);
    write(bad, b);
    const std::string err = open_error(bad);
    const bool in_index = at >= index_offset;
    if (covered(at) || in_index) {
      EXPECT_FALSE(err.empty()) << "flipping byte " << at << " went unnoticed";
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

TEST_F(EngineFileTest, CorruptSectionNamesTheSection) {
  const fs::path p = write_sample();
  const EngineFile good = EngineFile::open(p);
  std::string bytes = read(p);
  bytes[good.sections().at("weights/w").offset + 3] ^= 1;
  write(p, bytes);
  const std::string err = open_error(p);
  EXPECT_THAT(err, HasSubstr("section 'weights/w' is corrupt"));
  EXPECT_THAT(err, HasSubstr("rebuild"));
}

TEST_F(EngineFileTest, AbandonedWriterLeavesNothing) {
  {
    EngineFileWriter w(dir_ / "never.kestrel");
    w.add_section("a", "bytes");
    // no commit: as if building threw
  }
  EXPECT_TRUE(fs::is_empty(dir_)) << "the temp file was left behind";
}

TEST_F(EngineFileTest, FailedRebuildKeepsTheOldFile) {
  const fs::path p = write_sample();
  const std::string before = read(p);
  {
    EngineFileWriter w(p);
    w.add_section("half", "of a build");
  }
  EXPECT_EQ(read(p), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(EngineFileTest, UnwritableFolderIsAClearError) {
  try {
    EngineFileWriter w(dir_ / "no-such-folder" / "x.kestrel");
    FAIL() << "no error";
  } catch (const kestrel::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot create a file in"));
  }
}

TEST(EngineHeader, ParsesOnlyWhatItWasGiven) {
  // A header claiming a file larger than the bytes at hand is "truncated", not an out-of-bounds read.
  std::string header(64, '\0');
  std::memcpy(header.data(), kestrel::kEngineMagic, 8);
  header[8] = 1;
  EXPECT_THROW(kestrel::parse_engine_header(header, header.size(), "h"), kestrel::Error);
  EXPECT_THROW(kestrel::parse_engine({header.data(), 10}, "h", true), kestrel::Error);
}

}  // namespace
