// Model <-> engine file (see engine_io.h).
#include "runtime/engine_io.h"

#include <unistd.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "build/packed_weights.h"
#include "core/error.h"
#include "core/progress.h"
#include "io/engine_file.h"
#include "io/engine_unpack.h"
#include "io/weights.h"
#include "models/model_plan.h"
#include "models/plan_json.h"

namespace kestrel {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Changes whenever the meaning of the weight sections changes (layout, dtype, folds), independent of the
// container version: an engine with another layout is refused with a message to rebuild.
constexpr const char* kWeightsLayout = "cpu-fp32-out-in-v1";
constexpr const char* kKestrelVersion = "0.1.0";

const char* const kTokenizerFiles[] = {
    "tokenizer.json",          "vocab.json",       "merges.txt", "spiece.model", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json"};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string() + ": cannot read");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string rebuild_hint(const fs::path& file) {
  return "; rebuild it with `kestrel build MODEL -o " + file.string() + "`";
}

uint64_t fnv1a(std::string_view bytes, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

EngineTarget engine_target(const EngineBuildOptions& o) {
  EngineTarget t;
  t.device = o.device;
  if (o.device == "cpu") {
    t.precision = o.precision.empty() ? "fp32" : o.precision;
    if (t.precision != "fp32") fail("--precision " + t.precision + ": the cpu device computes in fp32 only");
  } else if (o.device == "cuda") {
    t.precision = o.precision.empty() ? "fp16" : o.precision;
    if (t.precision != "fp32" && t.precision != "fp16" && t.precision != "bf16")
      fail("--precision " + t.precision + ": cuda takes fp32, fp16 or bf16");
  } else {
    fail("--device " + o.device + ": choose cpu or cuda");
  }
  if (o.max_batch < 0) fail("--max-batch must be >= 0, got " + std::to_string(o.max_batch));
  if (o.max_length < 0) fail("--max-length must be >= 0, got " + std::to_string(o.max_length));
  t.max_batch = o.max_batch;
  t.max_length = o.max_length;
  return t;
}

uint64_t build_engine(const fs::path& model_dir, const fs::path& output, const EngineBuildOptions& options) {
  const EngineTarget target = engine_target(options);
  if (looks_like_engine_file(model_dir) || unpacked_engine_file(model_dir))
    fail(model_dir.string() + ": already an engine; build from the checkpoint folder");
  const ModelConfig config = load_config(model_dir);
  const Weights weights = Weights::load(model_dir);  // mapped: only one packed tensor is in memory at a time
  Plan plan = make_plan(config, weights);
  const std::vector<ScaleFold> folds = take_exact_scale_folds(plan);

  EngineFileWriter writer(output);
  writer.add_section("config.json", read_file(model_dir / "config.json"));
  if (fs::exists(model_dir / "generation_config.json"))
    writer.add_section("generation_config.json", read_file(model_dir / "generation_config.json"));
  json tokenizer_files = json::array();
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(model_dir / name)) {
      writer.add_section(std::string("tokenizer/") + name, read_file(model_dir / name));
      tokenizer_files.push_back(name);
    }
  writer.add_section("plan.json", plan_to_json(plan).dump());

  uint64_t total = 0;
  for (const WeightSpec& spec : plan.weights) total += uint64_t(shape_numel(spec.shape)) * sizeof(float);
  Progress progress("building " + output.filename().string(), total, Progress::Unit::Bytes,
                    options.quiet ? Progress::Style::Quiet : Progress::Style::Auto);
  uint64_t done = 0;
  for (const WeightSpec& spec : plan.weights) {
    PackedTensor t = pack_weight_cpu(spec, weights);
    for (const ScaleFold& f : folds)
      if (f.weight == spec.name) apply_scale_fold(f, t);
    writer.begin_section("weights/" + spec.name);
    writer.append(t.data.data(), t.data.size() * sizeof(float));
    writer.end_section();
    done += t.data.size() * sizeof(float);
    progress.update(done);
  }
  json metadata = {{"kestrel_version", kKestrelVersion},
                   {"model_type", config.model_type},
                   {"weights_layout", kWeightsLayout},
                   {"source", fs::absolute(model_dir).string()},
                   {"tokenizer_files", tokenizer_files},
                   {"build",
                    {{"device", target.device},
                     {"precision", target.precision},
                     {"max_batch", target.max_batch},
                     {"max_length", target.max_length}}}};
  writer.commit(metadata);
  progress.finish();
  return writer.bytes_written();
}

std::unique_ptr<Model> Model::load_engine(const fs::path& path) {
  const EngineFile file = EngineFile::open(path);
  const std::string source = path.string();
  const json& meta = file.metadata();
  const auto str = [&](const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_string())
      fail(source + ": engine metadata lacks '" + key + "'" + rebuild_hint(path));
    return j[key].get<std::string>();
  };
  const auto integer = [&](const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer())
      fail(source + ": engine metadata lacks '" + key + "'" + rebuild_hint(path));
    return j[key].get<int64_t>();
  };
  if (const std::string layout = str(meta, "weights_layout"); layout != kWeightsLayout)
    fail(source + ": engine weights are packed as '" + layout + "', this Kestrel uses '" + kWeightsLayout +
         "'" + rebuild_hint(path));
  const json& build = meta.contains("build") ? meta["build"] : json();
  EngineTarget target;
  target.device = str(build, "device");
  target.precision = str(build, "precision");
  target.max_batch = integer(build, "max_batch");
  target.max_length = integer(build, "max_length");
  target.file = path;

  const auto parse = [&](const std::string& name) {
    json j = json::parse(file.section(name), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail(source + ": engine section '" + name + "' is not JSON" + rebuild_hint(path));
    return j;
  };
  const json config_json = parse("config.json");
  const json generation_json = file.has("generation_config.json") ? parse("generation_config.json") : json();
  ModelConfig config = parse_config(
      config_json, file.has("generation_config.json") ? &generation_json : nullptr, source + ":config.json");
  Plan plan = plan_from_json(parse("plan.json"), source);

  // Weights are views into the mapping; each PackedValues holds the map open.
  PackedWeights weights;
  const auto mapping = file.mapping();
  for (const WeightSpec& spec : plan.weights) {
    const std::string name = "weights/" + spec.name;
    const std::string_view bytes = file.section(name);
    const uint64_t want = uint64_t(shape_numel(spec.shape)) * sizeof(float);
    if (bytes.size() != want)
      fail(source + ": engine section '" + name + "' holds " + std::to_string(bytes.size()) +
           " bytes, its shape " + shape_str(spec.shape) + " needs " + std::to_string(want) +
           rebuild_hint(path));
    PackedTensor t;
    t.shape = spec.shape;
    t.data = PackedValues::view(reinterpret_cast<const float*>(bytes.data()), bytes.size() / sizeof(float),
                                mapping);
    weights.tensors.emplace(spec.name, std::move(t));
  }
  return from_parts(std::move(config), std::move(plan), std::move(weights), path, std::move(target));
}

std::string engine_cache_key(const fs::path& model_dir, const EngineBuildOptions& options) {
  const EngineTarget t = engine_target(options);
  std::ostringstream d;
  d << "kestrel " << kKestrelVersion << " format " << kEngineFormatVersion << " layout " << kWeightsLayout
    << "\n"
    << "target " << t.device << " " << t.precision << " " << t.max_batch << " " << t.max_length << "\n";
  std::vector<fs::directory_entry> entries;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) entries.push_back(e);
  if (ec) fail(model_dir.string() + ": cannot list the folder: " + ec.message());
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.path() < b.path(); });
  for (const auto& e : entries) {
    if (!e.is_regular_file(ec)) continue;  // follows the HF cache's symlinks to blobs
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == "generation_config.json") {
      d << name << " content " << fnv1a(read_file(e.path())) << "\n";
      continue;
    }
    const auto mtime = fs::last_write_time(e.path(), ec).time_since_epoch().count();
    d << name << " size " << fs::file_size(e.path(), ec) << " mtime " << mtime << "\n";
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(fnv1a(d.str())));
  return buf;
}

fs::path engine_cache_path(const fs::path& model_dir, const EngineBuildOptions& options) {
  return kestrel_cache_dir() / "engines" / (engine_cache_key(model_dir, options) + ".kestrel");
}

std::unique_ptr<Model> load_model(const fs::path& model, const ModelLoadOptions& options) {
  // Any single file is taken for an engine: a foreign one gets the "not a Kestrel engine file" error.
  if (fs::is_regular_file(model)) return Model::load_engine(model);
  if (auto engine = unpacked_engine_file(model)) return Model::load_engine(*engine);
  if (!options.cache) return Model::load(model);
  const fs::path cached = engine_cache_path(model, options.build);
  if (fs::exists(cached)) {
    try {
      return Model::load_engine(cached);
    } catch (const Error& e) {
      // A damaged cache entry is the cache's problem, not the user's: say so once and rebuild it.
      std::cerr << "kestrel: rebuilding cached engine (" << e.what() << ")\n";
    }
  }
  std::error_code ec;
  fs::create_directories(cached.parent_path(), ec);
  if (ec || ::access(cached.parent_path().c_str(), W_OK) != 0) {
    // A read-only or missing cache must not stop the run: build in memory, as with --no-cache.
    std::cerr << "kestrel: cannot write the engine cache " << cached.parent_path().string()
              << "; building in memory\n";
    return Model::load(model);
  }
  EngineBuildOptions build = options.build;
  build.quiet = true;
  build_engine(model, cached, build);
  return Model::load_engine(cached);
}

}  // namespace kestrel
