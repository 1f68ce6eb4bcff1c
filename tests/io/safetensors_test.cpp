// safetensors reader: values come back exactly, and every structural problem is a one-line error naming the
// file and the tensor.
#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "checkpoint_writer.h"
#include "core/error.h"
#include "io/weights.h"

namespace kestrel {
namespace {

using ::testing::HasSubstr;
using namespace kestrel::test_files;

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes a file with the given header over `data` and returns the error message loading it gives.
  std::string load_error(const std::string& header, const Bytes& data = Bytes(16, 0)) {
    write_file(dir / "model.safetensors", safetensors_file(header, data));
    try {
      Weights::load_safetensors(dir / "model.safetensors");
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 1) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error for header " << header;
    return "";
  }
  TempDir dir;
};

TEST_F(SafetensorsTest, ReadsEveryDtypeExactly) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 7.0f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf80};
  const std::vector<int64_t> i64 = {-5, 1LL << 40};
  const std::vector<uint8_t> boolean = {1, 0, 1};
  Bytes data;
  auto append = [&](const Bytes& b) { data.insert(data.end(), b.begin(), b.end()); };
  append(as_bytes(f32));      // 0..24
  append(as_bytes(f16));      // 24..32
  append(as_bytes(bf16));     // 32..36
  append(Bytes(4, 0));        // padding: 36..40
  append(as_bytes(i64));      // 40..56
  append(as_bytes(boolean));  // 56..59
  std::string header = R"({"__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
    "c": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [32, 36]},
    "d": {"dtype": "I64", "shape": [2], "data_offsets": [40, 56]},
    "e": {"dtype": "BOOL", "shape": [3], "data_offsets": [56, 59]},
    "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [59, 59]}})";
  // Pad the header to 8 bytes, as writers do, so the data section is aligned.
  while ((header.size() + 8) % 8) header += ' ';
  write_file(dir / "model.safetensors", safetensors_file(header, data));

  Weights w = Weights::load_safetensors(dir / "model.safetensors");
  ASSERT_EQ(w.tensors().size(), 6u);
  EXPECT_FALSE(w.has("__metadata__"));
  const TensorView& a = w.get("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(std::vector<float>(a.as<float>(), a.as<float>() + 6), f32);
  EXPECT_EQ(std::vector<uint16_t>(w.get("b").as<uint16_t>(), w.get("b").as<uint16_t>() + 4), f16);
  EXPECT_EQ(to_float(w.get("c")), (std::vector<float>{1.0f, -1.0f}));
  EXPECT_EQ(std::vector<int64_t>(w.get("d").as<int64_t>(), w.get("d").as<int64_t>() + 2), i64);
  EXPECT_EQ(w.get("e").dtype, DType::Bool);
  EXPECT_EQ(w.get("e").as<uint8_t>()[2], 1);
  EXPECT_EQ(w.get("empty").numel(), 0);
  EXPECT_EQ(w.file_of("a"), (dir / "model.safetensors").string());
}

TEST_F(SafetensorsTest, ViewsAreZeroCopyIntoTheMappedFile) {
  std::string header = R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  while ((header.size() + 8) % 8) header += ' ';
  write_file(dir / "m.safetensors", safetensors_file(header, as_bytes(std::vector<float>{1, 2})));
  Weights w = Weights::load_safetensors(dir / "m.safetensors");
  Weights moved = std::move(w);  // views survive a move of the store
  EXPECT_EQ(moved.get("x").as<float>()[1], 2.0f);
}

TEST_F(SafetensorsTest, ScalarTensor) {
  write_file(dir / "m.safetensors",
             safetensors_file(R"({"s": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}})",
                              as_bytes(std::vector<double>{0.125})));
  Weights w = Weights::load_safetensors(dir / "m.safetensors");
  EXPECT_TRUE(w.get("s").shape.empty());
  EXPECT_EQ(w.get("s").as<double>()[0], 0.125);  // copied if the header length left it misaligned
}

TEST_F(SafetensorsTest, TooSmall) {
  write_file(dir / "model.safetensors", Bytes{1, 2, 3});
  EXPECT_THROW(Weights::load_safetensors(dir / "model.safetensors"), Error);
  write_file(dir / "model.safetensors", Bytes{});
  EXPECT_THROW(Weights::load_safetensors(dir / "model.safetensors"), Error);
}

TEST_F(SafetensorsTest, HeaderLengthPastTheFile) {
  Bytes b;
  put_le(b, 1000, 8);
  b.push_back('{');
  write_file(dir / "model.safetensors", b);
  try {
    Weights::load_safetensors(dir / "model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("model.safetensors: safetensors header length 1000 runs past the end"));
  }
}

TEST_F(SafetensorsTest, AbsurdHeaderLength) {
  Bytes b;
  put_le(b, 1ULL << 62, 8);
  write_file(dir / "model.safetensors", b);
  EXPECT_THROW(Weights::load_safetensors(dir / "model.safetensors"), Error);
}

TEST_F(SafetensorsTest, BadJson) {
  EXPECT_THAT(load_error(R"({"a": )"), HasSubstr("not valid JSON"));
}
TEST_F(SafetensorsTest, NotAnObject) {
  EXPECT_THAT(load_error("[1, 2]"), HasSubstr("must be a JSON object"));
}
TEST_F(SafetensorsTest, EntryNotAnObject) {
  EXPECT_THAT(load_error(R"({"w": 5})"), HasSubstr("tensor 'w': entry must be a JSON object"));
}

TEST_F(SafetensorsTest, Dtype) {
  EXPECT_THAT(load_error(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})"),
              HasSubstr("tensor 'w': missing 'dtype'"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}})"),
              HasSubstr("'dtype' must be a string"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})"),
              HasSubstr("unsupported dtype 'F8_E4M3'"));
}

TEST_F(SafetensorsTest, Shape) {
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})"), HasSubstr("missing 'shape'"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}})"),
              HasSubstr("'shape' must be an array"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})"),
              HasSubstr("shape dimension -1 is negative"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})"),
              HasSubstr("shape dimension must be an integer"));
  EXPECT_THAT(
      load_error(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})"),
      HasSubstr("overflows"));
  EXPECT_THAT(
      load_error(R"({"w": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 4]}})"),
      HasSubstr("too large"));
}

TEST_F(SafetensorsTest, DataOffsets) {
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [1]}})"), HasSubstr("missing 'data_offsets'"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})"),
              HasSubstr("'data_offsets' must be an array [begin, end]"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})"),
              HasSubstr("end before begin"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})"),
              HasSubstr("is negative"));
  EXPECT_THAT(load_error(R"({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}})"),
              HasSubstr("data_offsets [0, 20] run past the data section (16 bytes)"));
}

TEST_F(SafetensorsTest, SizeMismatchNamesFileTensorAndBothSizes) {
  EXPECT_THAT(
      load_error(
          R"({"h.0.attn.c_attn.weight": {"dtype": "F32", "shape": [768, 2304], "data_offsets": [0, 100]}})",
          Bytes(100, 0)),
      HasSubstr(
          "model.safetensors: tensor 'h.0.attn.c_attn.weight': data_offsets [0, 100] hold 100 bytes but "
          "shape [768, 2304] of F32 needs 7077888"));
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  EXPECT_THAT(load_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})"),
              HasSubstr("tensors 'a' and 'b' overlap"));
}

TEST_F(SafetensorsTest, ParsesFromABufferForTheFuzzer) {
  const Bytes file = safetensors_file(R"({"b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
                                          "a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}})",
                                      Bytes{9, 8, 7});
  auto entries = parse_safetensors(file.data(), file.size(), "buf");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "a");
  EXPECT_EQ(entries[1].dtype, DType::U8);
  EXPECT_EQ(file[entries[1].begin], 8);
  EXPECT_EQ(entries[1].end, file.size());
}

}  // namespace
}  // namespace kestrel
