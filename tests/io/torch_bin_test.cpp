// torch.save zip reader and restricted unpickler: real layouts (shared storages, offsets, transposed views,
// deflated and zip64 archives) read exactly; hostile or corrupt files are errors, never code execution.
#include "io/torch_bin.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "checkpoint_writer.h"
#include "core/error.h"
#include "io/torch_pickle.h"
#include "io/weights.h"
#include "io/zip_reader.h"

namespace kestrel {
namespace {

using ::testing::HasSubstr;
using namespace kestrel::test_files;

// storage "0": 6 floats 0..5; storage "1": 3 halves.
const std::vector<float> kStorage0 = {0, 1, 2, 3, 4, 5};
const std::vector<uint16_t> kStorage1 = {0x3c00, 0x4000, 0x4200};

Bytes standard_pickle() {
  return PickleWriter()
      .begin_state_dict()
      .tensor("a", "FloatStorage", "0", 6, 0, {2, 3}, {3, 1})
      .tensor("a_row1", "FloatStorage", "0", 6, 3, {3}, {1})     // a view sharing storage 0
      .tensor("a_t", "FloatStorage", "0", 6, 0, {3, 2}, {1, 3})  // a transposed view: copied row-major
      .tensor("h", "HalfStorage", "1", 3, 0, {3}, {1})
      .tensor("s", "FloatStorage", "0", 6, 5, {}, {})  // a scalar
      .end_state_dict()
      .bytes();
}

std::vector<ZipFileSpec> archive(const Bytes& pickle, bool deflate = false, size_t align = 64) {
  return {{"archive/data.pkl", pickle, deflate},
          {"archive/byteorder", Bytes{'l', 'i', 't', 't', 'l', 'e'}},
          {"archive/data/0", as_bytes(kStorage0), deflate, align},
          {"archive/data/1", as_bytes(kStorage1), deflate, align},
          {"archive/version", Bytes{'3', '\n'}}};
}

class TorchBinTest : public ::testing::Test {
 protected:
  Weights load(const Bytes& file) {
    write_file(dir / "pytorch_model.bin", file);
    return Weights::load_torch_bin(dir / "pytorch_model.bin");
  }
  std::string load_error(const Bytes& file) {
    try {
      load(file);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 1) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }
  std::string pickle_error(const Bytes& pickle) { return load_error(zip_archive(archive(pickle))); }

  static void expect_standard_values(const Weights& w) {
    ASSERT_EQ(w.tensors().size(), 5u);
    EXPECT_EQ(w.get("a").shape, (Shape{2, 3}));
    EXPECT_EQ(to_float(w.get("a")), kStorage0);
    EXPECT_EQ(to_float(w.get("a_row1")), (std::vector<float>{3, 4, 5}));
    EXPECT_EQ(w.get("a_t").shape, (Shape{3, 2}));
    EXPECT_EQ(to_float(w.get("a_t")), (std::vector<float>{0, 3, 1, 4, 2, 5}));
    EXPECT_EQ(w.get("h").dtype, DType::F16);
    EXPECT_EQ(to_float(w.get("h")), (std::vector<float>{1, 2, 3}));
    EXPECT_TRUE(w.get("s").shape.empty());
    EXPECT_EQ(to_float(w.get("s")), (std::vector<float>{5}));
  }
  TempDir dir;
};

TEST_F(TorchBinTest, StoredEntriesAreViewedInPlace) {
  Weights w = load(zip_archive(archive(standard_pickle())));
  expect_standard_values(w);
  // The contiguous tensor and its row view point into the same mapped storage.
  EXPECT_EQ(w.get("a").as<float>() + 3, w.get("a_row1").as<float>());
}

TEST_F(TorchBinTest, DeflatedEntries) {
  expect_standard_values(load(zip_archive(archive(standard_pickle(), true))));
}
TEST_F(TorchBinTest, Zip64Records) {
  expect_standard_values(load(zip_archive(archive(standard_pickle()), true)));
}

TEST_F(TorchBinTest, MisalignedStorageIsCopiedAligned) {
  auto files = archive(standard_pickle(), false, 1);
  files.insert(files.begin(), ZipFileSpec{"archive/x", Bytes{1}});  // shifts everything by an odd amount
  Weights w = load(zip_archive(files));
  expect_standard_values(w);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.get("a").data) % 4, 0u);
}

TEST_F(TorchBinTest, MemoAndParameters) {
  // BINPUT/BINGET reuse of the storage class, and _rebuild_parameter around a tensor (nn.Parameter).
  PickleWriter p;
  p.proto().op('}').op('q').byte(0).mark();
  p.str("w").global("torch._utils", "_rebuild_parameter").mark();
  p.global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark()
      .str("storage")
      .global("torch", "FloatStorage")
      .op('q')
      .byte(1)
      .str("0")
      .str("cpu")
      .integer(6)
      .op('t')
      .op('Q');
  p.integer(0).int_tuple({6}).int_tuple({1}).op(0x89).op('}').op('t').op('R');
  p.op(0x88).op('}').op('t').op('R');
  p.str("v").global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().str("storage").op('h').byte(1).str("0").str("cpu").integer(6).op('t').op('Q');
  p.integer(2).int_tuple({2}).int_tuple({1}).op(0x89).op('}').op('t').op('R');
  p.op('u').op('.');
  Weights w = load(zip_archive(archive(p.bytes())));
  EXPECT_EQ(to_float(w.get("w")), kStorage0);
  EXPECT_EQ(to_float(w.get("v")), (std::vector<float>{2, 3}));
}

TEST_F(TorchBinTest, DisallowedGlobalsAreNamed) {
  for (auto [module, name] : {std::pair{"os", "system"}, {"builtins", "eval"}, {"torch", "load"}}) {
    Bytes evil = PickleWriter().proto().global(module, name).str("echo hi").op(0x85).op('R').op('.').bytes();
    EXPECT_THAT(pickle_error(evil),
                HasSubstr("global '" + std::string(module) + "." + name + "' is not allowed"));
  }
  Bytes stack_global = PickleWriter().proto().str("posix").str("system").op(0x93).op('.').bytes();
  EXPECT_THAT(pickle_error(stack_global), HasSubstr("global 'posix.system' is not allowed"));
}

TEST_F(TorchBinTest, PickleStructureErrors) {
  EXPECT_THAT(pickle_error(PickleWriter().proto().op('I').op('.').bytes()),
              HasSubstr("unsupported opcode 0x49"));
  const Bytes whole = standard_pickle();
  const Bytes truncated(whole.begin(), whole.begin() + long(whole.size() / 2));
  EXPECT_THAT(pickle_error(truncated), HasSubstr("truncated"));
  EXPECT_THAT(pickle_error(PickleWriter().proto().op('h').byte(7).op('.').bytes()),
              HasSubstr("memo entry 7 is not set"));
  EXPECT_THAT(pickle_error(PickleWriter().proto().op('.').bytes()), HasSubstr("stack underflow"));
  EXPECT_THAT(pickle_error(PickleWriter().proto().op(']').op('.').bytes()), HasSubstr("pickle holds a list"));
  EXPECT_THAT(pickle_error(PickleWriter().proto().op('}').mark().str("k").integer(3).op('u').op('.').bytes()),
              HasSubstr("state dict entry 'k' is a int, not a tensor"));
  // A persistent id that is not a storage.
  EXPECT_THAT(pickle_error(PickleWriter().proto().str("x").op('Q').op('.').bytes()),
              HasSubstr("persistent id is not"));
}

TEST_F(TorchBinTest, TensorOutsideItsStorage) {
  Bytes p = PickleWriter()
                .begin_state_dict()
                .tensor("w", "FloatStorage", "0", 6, 4, {2, 2}, {2, 1})
                .end_state_dict()
                .bytes();
  EXPECT_THAT(pickle_error(p),
              HasSubstr("tensor 'w': size [2, 2] at offset 4 runs past its storage of 6 elements"));
  p = PickleWriter()
          .begin_state_dict()
          .tensor("w", "FloatStorage", "0", 6, 9, {0}, {1})
          .end_state_dict()
          .bytes();
  EXPECT_THAT(pickle_error(p), HasSubstr("storage offset 9 outside its storage"));
  p = PickleWriter()
          .begin_state_dict()
          .tensor("w", "FloatStorage", "0", 6, 0, {2, 3}, {-1, 1})
          .end_state_dict()
          .bytes();
  EXPECT_THAT(pickle_error(p), HasSubstr("negative stride"));
  p = PickleWriter()
          .begin_state_dict()
          .tensor("w", "FloatStorage", "0", 6, 0, {1LL << 40, 1LL << 40}, {1, 1})
          .end_state_dict()
          .bytes();
  EXPECT_THAT(pickle_error(p), HasSubstr("tensor 'w'"));
}

TEST_F(TorchBinTest, ExpandedViews) {
  // Stride 0 repeats elements: small expansions are copied, absurd ones refused before allocating.
  Bytes p = PickleWriter()
                .begin_state_dict()
                .tensor("w", "FloatStorage", "0", 6, 1, {3, 2}, {0, 1})
                .end_state_dict()
                .bytes();
  Weights w = load(zip_archive(archive(p)));
  EXPECT_EQ(to_float(w.get("w")), (std::vector<float>{1, 2, 1, 2, 1, 2}));
  p = PickleWriter()
          .begin_state_dict()
          .tensor("w", "FloatStorage", "0", 6, 0, {1 << 20, 1 << 20}, {0, 0})
          .end_state_dict()
          .bytes();
  EXPECT_THAT(pickle_error(p),
              HasSubstr("tensor 'w': expanded view [1048576, 1048576] is too large to copy"));
}

TEST_F(TorchBinTest, PickleObjectCap) {
  PickleWriter p;
  p.proto();
  for (int i = 0; i < 4'000'001; ++i) p.op('N');
  EXPECT_THAT(pickle_error(p.op('.').bytes()), HasSubstr("more than 4000000 objects"));
}

TEST_F(TorchBinTest, ParsesFromABufferForTheFuzzer) {
  const Bytes file = zip_archive(archive(standard_pickle(), true));
  expect_standard_values(TorchBinReader::parse(file.data(), file.size(), "buf"));
}

TEST_F(TorchBinTest, StorageProblems) {
  Bytes p = PickleWriter()
                .begin_state_dict()
                .tensor("w", "FloatStorage", "7", 6, 0, {6}, {1})
                .end_state_dict()
                .bytes();
  EXPECT_THAT(pickle_error(p), HasSubstr("tensor 'w': storage '7' is missing from the archive"));
  // Storage 0 holds 24 bytes; claiming 100 doubles is a lie.
  p = PickleWriter()
          .begin_state_dict()
          .tensor("w", "DoubleStorage", "0", 100, 0, {6}, {1})
          .end_state_dict()
          .bytes();
  EXPECT_THAT(pickle_error(p), HasSubstr("storage '0' holds 24 bytes but claims 100 elements of F64"));
}

TEST_F(TorchBinTest, BigEndianIsRefused) {
  auto files = archive(standard_pickle());
  files[1].data = Bytes{'b', 'i', 'g'};
  EXPECT_THAT(load_error(zip_archive(files)), HasSubstr("big-endian"));
}

TEST_F(TorchBinTest, LegacyFormatIsExplained) {
  EXPECT_THAT(load_error(Bytes{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8}),
              HasSubstr("unsupported legacy torch format; re-save it with torch>=1.6"));
  EXPECT_THAT(load_error(Bytes{'h', 'e', 'l', 'l', 'o'}), HasSubstr("not a torch.save zip archive"));
}

TEST_F(TorchBinTest, ZipWithoutDataPkl) {
  EXPECT_THAT(load_error(zip_archive({{"archive/other", Bytes{1}}})), HasSubstr("has no <name>/data.pkl"));
}

TEST_F(TorchBinTest, CorruptZips) {
  const Bytes good = zip_archive(archive(standard_pickle()));
  const Bytes cut(good.begin(), good.end() - 30);  // loses the end-of-central-directory record
  EXPECT_THAT(load_error(cut), HasSubstr("corrupt zip archive"));

  Bytes bad_cd = good;  // central directory offset far past the end
  bad_cd[bad_cd.size() - 6] = 0xff;
  bad_cd[bad_cd.size() - 5] = 0xff;
  EXPECT_THAT(load_error(bad_cd), HasSubstr("central directory out of bounds"));

  Bytes bad_crc = zip_archive(archive(standard_pickle(), true));
  // Flip a byte of the first entry's CRC in its central directory record.
  const Bytes sig = {0x50, 0x4b, 0x01, 0x02};
  auto cd = std::search(bad_crc.begin(), bad_crc.end(), sig.begin(), sig.end());
  ASSERT_NE(cd, bad_crc.end());
  cd[16] ^= 0xff;
  EXPECT_THAT(load_error(bad_crc), HasSubstr("CRC mismatch"));
}

TEST_F(TorchBinTest, ZipReaderFromABuffer) {
  const Bytes z = zip_archive({{"a", Bytes{1, 2, 3}}, {"b", Bytes(1000, 7), true}}, true);
  ZipReader zip(z.data(), z.size(), "buf");
  ASSERT_EQ(zip.entries().size(), 2u);
  ZipBytes a = zip.read(*zip.find("a"));
  EXPECT_EQ(Bytes(a.data, a.data + a.size), (Bytes{1, 2, 3}));
  EXPECT_EQ(a.owned, nullptr);
  ZipBytes b = zip.read(*zip.find("b"));
  EXPECT_EQ(Bytes(b.data, b.data + b.size), Bytes(1000, 7));
  EXPECT_EQ(zip.find("c"), nullptr);
}

TEST_F(TorchBinTest, EmptyDeflatedEntry) {
  const Bytes z = zip_archive({{"empty", Bytes{}, true}});
  ZipReader zip(z.data(), z.size(), "buf");
  EXPECT_EQ(zip.read(zip.entries()[0]).size, 0u);
}

TEST_F(TorchBinTest, PickleParserFromABuffer) {
  const Bytes p = standard_pickle();
  auto tensors = parse_torch_pickle(p.data(), p.size(), "buf");
  ASSERT_EQ(tensors.size(), 5u);
  EXPECT_EQ(tensors[1].name, "a_row1");
  EXPECT_EQ(tensors[1].storage_offset, 3);
  EXPECT_EQ(tensors[3].dtype, DType::F16);
  EXPECT_EQ(tensors[2].stride, (std::vector<int64_t>{1, 3}));
}

}  // namespace
}  // namespace kestrel
