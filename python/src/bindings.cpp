// kestrel._kestrel: the native half of the Python package, a thin layer over the C++ API
// (runtime/engine_io.h, runtime/session.h, generate/generator.h). Token ids cross as Python lists / int64
// arrays; logits come back as float32 numpy arrays that own the C++ vector they were computed into (no copy;
// torch.from_numpy shares it). Every native call that computes releases the GIL. kestrel::Error becomes
// kestrel.KestrelError (a ValueError).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "generate/generator.h"
#include "io/engine_file.h"
#include "io/engine_unpack.h"
#include "runtime/cuda_session.h"
#include "runtime/engine_io.h"

namespace py = pybind11;
using namespace kestrel;

namespace {

// A float vector handed to numpy without copying: the capsule owns it.
py::array_t<float> to_numpy(std::vector<float>&& values, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<float>(std::move(values));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, owned->data(), free_when_done);
}

template <typename T>
std::optional<T> take(py::dict& options, const char* key) {
  if (!options.contains(key)) return std::nullopt;
  py::object v = options[key];
  PyDict_DelItemString(options.ptr(), key);
  if (v.is_none()) return std::nullopt;
  return v.cast<T>();
}

GenerationOptions generation_options(py::dict options) {
  GenerationOptions o;
  o.max_new_tokens = take<int64_t>(options, "max_new_tokens");
  o.min_new_tokens = take<int64_t>(options, "min_new_tokens");
  o.do_sample = take<bool>(options, "do_sample");
  o.num_beams = take<int64_t>(options, "num_beams");
  o.num_return_sequences = take<int64_t>(options, "num_return_sequences");
  o.top_k = take<int64_t>(options, "top_k");
  o.no_repeat_ngram_size = take<int64_t>(options, "no_repeat_ngram_size");
  o.temperature = take<double>(options, "temperature");
  o.top_p = take<double>(options, "top_p");
  o.repetition_penalty = take<double>(options, "repetition_penalty");
  o.length_penalty = take<double>(options, "length_penalty");
  if (auto e = take<std::string>(options, "early_stopping"))
    o.early_stopping = parse_early_stopping(*e, "early_stopping");
  o.seed = take<uint64_t>(options, "seed");
  o.eos_token_ids = take<std::vector<int64_t>>(options, "eos_token_id");
  o.pad_token_id = take<int64_t>(options, "pad_token_id");
  if (!options.empty()) {
    std::string keys;
    for (auto item : options) keys += (keys.empty() ? "" : ", ") + py::str(item.first).cast<std::string>();
    fail("generate: options the native generator does not know: " + keys);
  }
  return o;
}

// One loaded model plus the session options every session on it uses, and the session its last call left
// idle. Opening a session plans its memory and, on CUDA, uploads every weight: a forward or generate() that
// opened one per call would spend most of its time there. So calls take the idle session when it holds their
// rows, and give it back when they are done (a PySession when Python drops it); one that needs more rows
// opens a larger one, and concurrent calls, finding none idle, open their own.
struct PyModel {
  std::unique_ptr<Model> model;
  SessionOptions session_options;
  std::mutex mutex;
  std::unique_ptr<Session> idle;
  std::atomic<int64_t> opened{0};  // sessions opened so far (tests check the reuse)

  std::unique_ptr<Session> take_session(int64_t rows) {
    std::unique_ptr<Session> too_small;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (idle && idle->max_rows() >= rows) return std::move(idle);
      too_small = std::move(idle);
    }
    // Past the rows planned (an explicit max_batch, the idle session's, or the backend's default: CUDA plans
    // CudaSessionOptions' 8), twice as many, so a growing batch does not reopen at every call. The idle
    // session is closed first: on a GPU both would hold every weight.
    SessionOptions options = session_options;
    const int64_t backend_default = options.device == "cuda" ? CudaSessionOptions{}.max_batch : 0;
    const int64_t planned = too_small               ? too_small->max_rows()
                            : options.max_batch > 0 ? options.max_batch
                                                    : backend_default;
    too_small.reset();
    if (planned > 0 && rows > planned) options.max_batch = std::max(rows, 2 * planned);
    auto session = open_session(*model, options);
    ++opened;
    if (session->max_rows() < rows)
      internal_error("a session planned for " + std::to_string(options.max_batch) + " rows holds " +
                     std::to_string(session->max_rows()) + ", fewer than the call's " + std::to_string(rows));
    return session;
  }
  // Keeps the session that holds the most rows.
  void give_back(std::unique_ptr<Session> session) {
    std::lock_guard<std::mutex> lock(mutex);
    if (session && (!idle || session->max_rows() >= idle->max_rows())) idle = std::move(session);
  }
};

struct PySession {
  std::shared_ptr<PyModel> owner;  // keeps the model alive as long as the session
  std::unique_ptr<Session> session;
  PySession() = default;
  PySession(const PySession&) = delete;
  PySession& operator=(const PySession&) = delete;
  ~PySession() {
    if (owner && session) owner->give_back(std::move(session));
  }
};

py::array_t<float> logits_array(std::vector<float>&& logits, int64_t vocab) {
  const py::ssize_t rows = vocab > 0 ? py::ssize_t(logits.size() / size_t(vocab)) : 0;
  return to_numpy(std::move(logits), {rows, py::ssize_t(vocab)});
}

}  // namespace

PYBIND11_MODULE(_kestrel, m) {
  m.doc() = "Kestrel's native core: engine files, sessions and the generation loop.";
  static py::exception<Error> error(m, "KestrelError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    }
  });

  m.def(
      "build_engine",
      [](const std::filesystem::path& model_dir, const std::filesystem::path& output,
         const std::string& device, const std::string& precision, int64_t max_batch, int64_t max_length,
         bool quiet) {
        EngineBuildOptions o{device, precision, max_batch, max_length, quiet};
        py::gil_scoped_release release;
        return build_engine(model_dir, output, o);
      },
      py::arg("model_dir"), py::arg("output"), py::arg("device") = "cpu", py::arg("precision") = "",
      py::arg("max_batch") = 0, py::arg("max_length") = 0, py::arg("quiet") = true,
      "Builds an engine file from a checkpoint folder (atomic write); returns the bytes written.");
  m.def(
      "engine_cache_path",
      [](const std::filesystem::path& model_dir, const std::string& device, const std::string& precision) {
        return engine_cache_path(model_dir, EngineBuildOptions{device, precision});
      },
      py::arg("model_dir"), py::arg("device") = "cpu", py::arg("precision") = "");
  m.def("unpack_engine", &unpack_engine, py::arg("engine"),
        "Unpacks an engine's config and tokenizer files into the cache; returns that folder.");
  m.def("kestrel_cache_dir", &kestrel_cache_dir);
  m.def(
      "engine_metadata",
      [](const std::filesystem::path& engine) { return EngineFile::open(engine, false).metadata().dump(); },
      py::arg("engine"), "An engine file's metadata (build target, model type, source) as JSON text.");

  py::class_<PyModel, std::shared_ptr<PyModel>>(m, "Model")
      .def_static(
          "load",
          [](const std::filesystem::path& path, const std::string& device, const std::string& precision,
             bool cache, int threads, int64_t max_length, int64_t max_batch, bool deterministic) {
            if (max_batch < 0) fail("max_batch must be >= 0, got " + std::to_string(max_batch));
            if (max_length < 0) fail("max_length must be >= 0, got " + std::to_string(max_length));
            auto pm = std::make_shared<PyModel>();
            ModelLoadOptions lo;
            lo.build.device = device;
            lo.build.precision = precision;
            lo.cache = cache;
            {
              py::gil_scoped_release release;
              pm->model = load_model(path, lo);
            }
            const auto& target = pm->model->engine_target();
            pm->session_options.threads = threads;
            pm->session_options.device = device;
            pm->session_options.precision =
                precision.empty() ? (target ? target->precision : "fp16") : precision;
            pm->session_options.max_length = max_length > 0 ? max_length : (target ? target->max_length : 0);
            pm->session_options.max_batch = max_batch > 0 ? max_batch : (target ? target->max_batch : 0);
            pm->session_options.deterministic = deterministic;
            if (device == "cuda") {  // as transformers' .to("cuda"): the weights go to the GPU now, and a
                                     // machine without one fails here, not at the first call
              py::gil_scoped_release release;
              pm->give_back(pm->take_session(0));
            }
            return pm;
          },
          py::arg("path"), py::arg("device") = "cpu", py::arg("precision") = "", py::arg("cache") = true,
          py::arg("threads") = 0, py::arg("max_length") = 0, py::arg("max_batch") = 0,
          py::arg("deterministic") = false)
      .def_property_readonly("model_type", [](const PyModel& m) { return m.model->config().model_type; })
      .def_property_readonly("sessions_opened", [](const PyModel& m) { return m.opened.load(); })
      .def_property_readonly("is_encoder_decoder",
                             [](const PyModel& m) { return m.model->is_encoder_decoder(); })
      .def_property_readonly("vocab_size", [](const PyModel& m) { return m.model->config().vocab_size(); })
      .def_property_readonly("decoder_start_token_id",
                             [](const PyModel& m) { return m.model->decoder_start_token_id(); })
      .def_property_readonly("path", [](const PyModel& m) { return m.model->dir(); })
      .def_property_readonly("engine_device",
                             [](const PyModel& m) -> std::optional<std::string> {
                               if (!m.model->engine_target()) return std::nullopt;
                               return m.model->engine_target()->device;
                             })
      .def(
          "open_session",
          [](const std::shared_ptr<PyModel>& m, int64_t rows) {
            auto s = std::make_unique<PySession>();
            s->owner = m;
            py::gil_scoped_release release;
            s->session = m->take_session(rows);
            return s;
          },
          py::arg("rows") = 0, "A session for up to `rows` rows (the model's idle one where it holds them).")
      .def(
          "generate",
          [](const std::shared_ptr<PyModel>& m, const TokenRows& prompts, py::dict options,
             std::optional<py::function> on_tokens) {
            const GenerationConfig config =
                make_generation_config(m->model->config().generation, generation_options(py::dict(options)));
            TokenStream stream;
            if (on_tokens) {
              stream = [&on_tokens](int64_t sequence, std::span<const int64_t> tokens) {
                py::gil_scoped_acquire acquire;
                (*on_tokens)(sequence, std::vector<int64_t>(tokens.begin(), tokens.end()));
              };
            }
            GenerationResult result;
            {
              py::gil_scoped_release release;
              auto session = m->take_session(session_rows(config, int64_t(prompts.size())));
              result = generate(*session, prompts, config, stream);
              m->give_back(std::move(session));
            }
            py::list sequences, scores;
            for (const auto& s : result.sequences) {
              sequences.append(py::cast(s.tokens));
              scores.append(s.score ? py::cast(*s.score) : py::none());
            }
            return py::make_tuple(sequences, scores, result.pad_token_id);
          },
          py::arg("prompts"), py::arg("options"), py::arg("on_tokens") = py::none(),
          "Runs the whole generation loop natively. Returns (new tokens per sequence, beam scores, pad id).");

  py::class_<PySession>(m, "Session")
      .def_property_readonly("batch_size", [](const PySession& s) { return s.session->batch_size(); })
      .def_property_readonly("vocab_size", [](const PySession& s) { return s.session->vocab_size(); })
      .def_property_readonly("max_positions", [](const PySession& s) { return s.session->max_positions(); })
      .def("decoder_length", [](const PySession& s, int64_t b) { return s.session->decoder_length(b); })
      .def(
          "start",
          [](PySession& s, const TokenRows& rows, const TokenRows& decoder_prefix, bool all_positions) {
            std::vector<float> logits;
            {
              py::gil_scoped_release release;
              logits = s.session->start(rows, decoder_prefix, all_positions);
            }
            return logits_array(std::move(logits), s.session->vocab_size());
          },
          py::arg("rows"), py::arg("decoder_prefix") = TokenRows{}, py::arg("all_positions") = false)
      .def(
          "step",
          [](PySession& s, const TokenRows& tokens, bool all_positions) {
            std::vector<float> logits;
            {
              py::gil_scoped_release release;
              logits = s.session->step(tokens, all_positions);
            }
            return logits_array(std::move(logits), s.session->vocab_size());
          },
          py::arg("tokens"), py::arg("all_positions") = false)
      .def("reorder", [](PySession& s, const std::vector<int64_t>& src) {
        py::gil_scoped_release release;
        s.session->reorder(src);
      });
}
