// Weights::load(dir): format preference, sharded checkpoints (index + shards) and their consistency checks.
#include "io/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "checkpoint_writer.h"
#include "core/error.h"

namespace kestrel {
namespace {

using ::testing::HasSubstr;
using namespace kestrel::test_files;

// A safetensors file holding one F32 tensor per name, each [2] = {value, value + 1}.
Bytes shard(const std::vector<std::pair<std::string, float>>& tensors) {
  std::string header = "{";
  Bytes data;
  for (const auto& [name, value] : tensors) {
    header += std::string(header.size() > 1 ? ", " : "") + "\"" + name +
              "\": {\"dtype\": \"F32\", \"shape\": [2], " + "\"data_offsets\": [" +
              std::to_string(data.size()) + ", " + std::to_string(data.size() + 8) + "]}";
    const Bytes b = as_bytes(std::vector<float>{value, value + 1});
    data.insert(data.end(), b.begin(), b.end());
  }
  header += "}";
  while ((header.size() + 8) % 8) header += ' ';
  return safetensors_file(header, data);
}

// A torch.save archive with one F32 tensor [2] = {value, value + 1}.
Bytes torch_file(const std::string& name, float value) {
  Bytes pickle = PickleWriter()
                     .begin_state_dict()
                     .tensor(name, "FloatStorage", "0", 2, 0, {2}, {1})
                     .end_state_dict()
                     .bytes();
  return zip_archive(
      {{"m/data.pkl", pickle}, {"m/data/0", as_bytes(std::vector<float>{value, value + 1}), false, 64}});
}

class WeightsTest : public ::testing::Test {
 protected:
  std::string load_error() {
    try {
      Weights::load(dir.path());
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 1) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }
  TempDir dir;
};

TEST_F(WeightsTest, SingleSafetensors) {
  write_file(dir / "model.safetensors", shard({{"a", 1}, {"b", 3}}));
  Weights w = Weights::load(dir.path());
  EXPECT_EQ(to_float(w.get("b")), (std::vector<float>{3, 4}));
  EXPECT_EQ(w.origin(), dir.path().string());
  EXPECT_EQ(w.files().size(), 1u);
}

TEST_F(WeightsTest, PrefersSafetensorsOverTorchBin) {
  write_file(dir / "model.safetensors", shard({{"a", 1}}));
  write_file(dir / "pytorch_model.bin", torch_file("a", 10));
  EXPECT_EQ(to_float(Weights::load(dir.path()).get("a")), (std::vector<float>{1, 2}));
}

TEST_F(WeightsTest, SingleTorchBin) {
  write_file(dir / "pytorch_model.bin", torch_file("a", 10));
  EXPECT_EQ(to_float(Weights::load(dir.path()).get("a")), (std::vector<float>{10, 11}));
}

TEST_F(WeightsTest, ShardedSafetensors) {
  write_file(dir / "model-00001-of-00002.safetensors", shard({{"a", 1}, {"b", 3}}));
  write_file(dir / "model-00002-of-00002.safetensors", shard({{"c", 5}}));
  write_file(dir / "model.safetensors.index.json",
             std::string(R"({"metadata": {"total_size": 24}, "weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"}})"));
  Weights w = Weights::load(dir.path());
  EXPECT_EQ(w.tensors().size(), 3u);
  EXPECT_EQ(w.files().size(), 2u);
  EXPECT_EQ(to_float(w.get("c")), (std::vector<float>{5, 6}));
  EXPECT_THAT(w.file_of("c"), HasSubstr("model-00002-of-00002.safetensors"));
}

TEST_F(WeightsTest, ShardedTorchBin) {
  write_file(dir / "pytorch_model-1.bin", torch_file("a", 1));
  write_file(dir / "pytorch_model-2.bin", torch_file("b", 7));
  write_file(dir / "pytorch_model.bin.index.json",
             std::string(R"({"weight_map": {"a": "pytorch_model-1.bin", "b": "pytorch_model-2.bin"}})"));
  Weights w = Weights::load(dir.path());
  EXPECT_EQ(to_float(w.get("b")), (std::vector<float>{7, 8}));
}

TEST_F(WeightsTest, IndexedTensorMissingFromItsShard) {
  write_file(dir / "s1.safetensors", shard({{"a", 1}}));
  write_file(dir / "model.safetensors.index.json", std::string(R"({"weight_map": {"a": "s1.safetensors",
      "zz": "s1.safetensors"}})"));
  EXPECT_THAT(load_error(), HasSubstr("tensor 'zz' is not in its shard"));
}

TEST_F(WeightsTest, TensorInTwoShards) {
  write_file(dir / "s1.safetensors", shard({{"a", 1}}));
  write_file(dir / "s2.safetensors", shard({{"a", 2}, {"b", 3}}));
  write_file(dir / "model.safetensors.index.json",
             std::string(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})"));
  EXPECT_THAT(load_error(), HasSubstr("tensor 'a' is in two shards"));
}

TEST_F(WeightsTest, BadIndexes) {
  const auto index = dir / "model.safetensors.index.json";
  write_file(index, std::string("{not json"));
  EXPECT_THAT(load_error(), HasSubstr("model.safetensors.index.json: not valid JSON"));
  write_file(index, std::string(R"({"metadata": {}})"));
  EXPECT_THAT(load_error(), HasSubstr("missing object 'weight_map'"));
  write_file(index, std::string(R"({"weight_map": {}})"));
  EXPECT_THAT(load_error(), HasSubstr("'weight_map' is empty"));
  write_file(index, std::string(R"({"weight_map": {"a": 3}})"));
  EXPECT_THAT(load_error(), HasSubstr("weight_map entry 'a' must name a shard file"));
  write_file(index, std::string(R"({"weight_map": {"a": "../../etc/passwd"}})"));
  EXPECT_THAT(load_error(), HasSubstr("must be a file name in the checkpoint folder"));
  write_file(index, std::string(R"({"weight_map": {"a": "gone.safetensors"}})"));
  EXPECT_THAT(load_error(), HasSubstr("shard 'gone.safetensors' does not exist"));
}

TEST_F(WeightsTest, NothingToLoad) {
  EXPECT_THAT(load_error(),
              HasSubstr("no weights found (looked for model.safetensors, model.safetensors.index.json, "
                        "pytorch_model.bin, pytorch_model.bin.index.json)"));
  EXPECT_THROW(Weights::load(dir / "not-there"), Error);
}

TEST_F(WeightsTest, MissingTensorNamesTheCheckpoint) {
  write_file(dir / "model.safetensors", shard({{"a", 1}}));
  Weights w = Weights::load(dir.path());
  try {
    w.get("lm_head.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir.path().string() + ": tensor 'lm_head.weight' not found"));
  }
}

TEST(SharedCheckpoint, TinyGpt2Loads) {
  const std::filesystem::path dir =
      std::filesystem::path(KESTREL_SHARED_DIR) / "models" / "tiny-gpt2-medical";
  if (!std::filesystem::exists(dir / "model.safetensors")) GTEST_SKIP() << dir << " is absent";
  Weights w = Weights::load(dir);
  EXPECT_TRUE(w.has("transformer.wte.weight") || w.has("wte.weight"));
  for (const auto& [name, t] : w.tensors()) EXPECT_GE(t.numel(), 0) << name;
}

}  // namespace
}  // namespace kestrel
