// One AOTInductor encoder package, padded into the shape box its metadata declares.
//
// On CUDA: the Python runtime must put libstdc++ in the process's global symbol scope before it loads a
// CUDA package (virnucpro_trt/engines/cxx_runtime.py: the package's wrapper .so leaves C++ runtime
// symbols as weak undefined references). A C++ executable links libstdc++ itself, into the global scope,
// so nothing of the kind is needed here.
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <limits>
#include <system_error>

#ifdef VIRNUCPRO_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <nlohmann/json.hpp>

#include "virnucpro/bounded_json.h"
#include "virnucpro/runtime.h"
#include "virnucpro/text.h"

namespace virnucpro {
namespace {

// Out-of-memory, recognised as the Python runtime does (virnucpro_trt/runtime/out_of_memory.py):
// torch's c10::OutOfMemoryError (the caching allocator, e.g. copying the inputs to the device); an error
// whose message says so; or any failure during which the CUDA caching allocator counted an OOM -- an
// AOTInductor package reports its own failed allocation only as "run_func_(...) API call failed".
constexpr const char* kOutOfMemoryPhrases[] = {"out of memory", "failed to allocate memory",
                                                "could not be allocated", "cuda_error_out_of_memory"};

bool says_out_of_memory(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::any_of(std::begin(kOutOfMemoryPhrases), std::end(kOutOfMemoryPhrases),
                     [&](const char* phrase) { return text.find(phrase) != std::string::npos; });
}

int64_t device_ooms(const c10::Device& device) {
#ifdef VIRNUCPRO_WITH_CUDA
  if (device.is_cuda()) {
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0).num_ooms;
  }
#endif
  (void)device;
  return 0;
}

#ifdef VIRNUCPRO_TEST_HOOKS
// Fault injection for tests (no device can be made to run out of memory on demand), compiled only into
// the test suite's tool (CMake target virnucpro-host-test-hooks): VIRNUCPRO_HOST_TEST_OOM_ROWS=N makes every
// call on a batch of more than N rows fail as out of memory before it runs. Read once.
int64_t injected_oom_rows() {
  static const int64_t rows = [] {
    const char* value = std::getenv("VIRNUCPRO_HOST_TEST_OOM_ROWS");
    return value ? std::strtoll(value, nullptr, 10) : -1;
  }();
  return rows;
}

// VIRNUCPRO_HOST_TEST_NAN_AT=I puts a NaN at flat index I of every batch's embeddings (negative: from the
// end), where a numerically broken engine would, so the tests can see the host refuse the batch.
void inject_nan(at::Tensor& pooled) {
  static const char* value = std::getenv("VIRNUCPRO_HOST_TEST_NAN_AT");
  if (value == nullptr || pooled.numel() == 0) return;
  int64_t at = std::strtoll(value, nullptr, 10);
  if (at < 0) at += pooled.numel();
  if (at >= 0 && at < pooled.numel()) pooled.view({-1})[at] = std::numeric_limits<float>::quiet_NaN();
}
#endif

constexpr const char* kMeta = "virnucpro.";

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

using Metadata = std::unordered_map<std::string, std::string>;

std::string meta(const Metadata& metadata, const std::string& key, const std::string& file) {
  const auto it = metadata.find(kMeta + key);
  if (it == metadata.end()) {
    throw EngineMismatch(file + " was not built by virnucpro's inductor backend (no " + kMeta + key + ")");
  }
  return it->second;
}

// A number of the package's metadata: decimal digits only (std::stoll would take "12abc" as 12 and throw
// out_of_range past int64) in [low, high].
int64_t meta_integer(const Metadata& metadata, const std::string& key, const std::string& file, int64_t low,
                     int64_t high) {
  const auto text = meta(metadata, key, file);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  const bool digits = !text.empty() && std::isdigit(static_cast<unsigned char>(text[0]));
  if (!digits || error != std::errc() || end != text.data() + text.size() || value < low || value > high) {
    throw EngineMismatch(file + ": " + kMeta + key + " is not an integer in [" + std::to_string(low) + ", " +
                         std::to_string(high) + "]");
  }
  return value;
}

// The box compiled into the package, held to the rules the Python side builds it by (GraphShapes in
// inductor_shapes.py): 1 <= min <= max for batch and length, lengths multiples of sequence_multiple.
ShapeBox compiled_box(const Metadata& metadata, const std::string& file) {
  ShapeBox graph;
  graph.sequence_multiple = meta_integer(metadata, "graph.sequence_multiple", file, 1, kMaxLength);
  graph.min_batch = meta_integer(metadata, "graph.min_batch", file, 1, kMaxBatch);
  graph.max_batch = meta_integer(metadata, "graph.max_batch", file, graph.min_batch, kMaxBatch);
  graph.min_length = meta_integer(metadata, "graph.min_length", file, 1, kMaxLength);
  graph.max_length = meta_integer(metadata, "graph.max_length", file, graph.min_length, kMaxLength);
  if (graph.min_length % graph.sequence_multiple != 0 || graph.max_length % graph.sequence_multiple != 0) {
    throw EngineMismatch(file + ": its compiled lengths are not multiples of its sequence multiple");
  }
  return graph;
}

// The package's vocabulary size. A package without it (built before virnucpro.vocab_size was recorded)
// is refused: without it no token id can be checked, and an id past the table aborts the process.
int64_t compiled_vocab(const Metadata& metadata, const std::string& file) {
  if (!metadata.count(std::string(kMeta) + "vocab_size")) {
    throw EngineMismatch(file + " records no vocabulary size (built by an older virnucpro-trt), so its token "
                         "ids cannot be checked: rebuild the engines with `virnucpro-trt build --backend inductor`");
  }
  return meta_integer(metadata, "vocab_size", file, 1, kMaxVocab);
}

// The weights table a recipe-9 package records (virnucpro.weights, written by the Python build:
// engines/package_weights.py): {name: [safetensors dtype, [sizes]]}. The package is trusted code, but
// its table is read with the same bounds as any JSON here.
std::map<std::string, std::pair<std::string, std::vector<int64_t>>> weights_table(const std::string& text,
                                                                               const std::string& file) {
  const auto bad = [&] { return EngineMismatch(file + " records an unreadable weights table"); };
  nlohmann::json parsed;
  try {
    parsed = parse_bounded(text);
  } catch (const std::exception&) {
    throw bad();
  }
  if (!parsed.is_object()) throw bad();
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> table;
  for (const auto& [name, info] : parsed.items()) {
    if (!info.is_array() || info.size() != 2 || !info[0].is_string() || !info[1].is_array()) throw bad();
    std::vector<int64_t> shape;
    for (const auto& size : info[1]) {
      if (!size.is_number_unsigned() || size.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
        throw bad();
      }
      shape.push_back(size.get<int64_t>());
    }
    table[name] = {info[0].get<std::string>(), shape};
  }
  return table;
}

}  // namespace

Encoder::Encoder(const EngineManifest& manifest, const std::string& kind, const c10::Device& device)
    : entry_(manifest.models.at(kind)), device_(device) {
  const auto path = (manifest.folder / entry_.artifact).string();
  const c10::DeviceIndex index = device.is_cuda() ? (device.has_index() ? device.index() : 0) : -1;
  try {  // a damaged package (its SHA-256 recorded anew) is refused like a mismatch, as the Python loader does
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
  } catch (const std::exception& error) {
    throw EngineMismatch("cannot load " + path + ": " + first_line(error.what()));
  }
  const auto metadata = loader_->get_metadata();
  // the package's own strings, shown printable: a newline in them made the refusal two lines
  const std::string found = printable(meta(metadata, "kind", path)) + "/" +
                            printable(meta(metadata, "precision", path)) + "/" + printable(meta(metadata, "dim", path));
  const std::string expected = kind + "/" + manifest.precision + "/" + std::to_string(entry_.dim);
  if (found != expected) {
    throw EngineMismatch(path + " holds " + found + " but the manifest promises " + expected);
  }
  graph_ = compiled_box(metadata, path);
  vocab_size_ = compiled_vocab(metadata, path);
  check_manifest_fits(path);
  load_weights(manifest, metadata);
}

// A recipe-9 package's weights, from <package stem>.weights.safetensors beside it (a package without a
// table holds its own), checked as the Python loader checks them (engines/package_weights.py): the file
// must be one the manifest lists (and so hashes), and hold exactly the names, dtypes and shapes the
// package records, because load_constants checks neither shape nor dtype and the kernels would read
// past a smaller tensor. The tensors stay in weights_: the loader uses them in place.
void Encoder::load_weights(const EngineManifest& manifest,
                           const std::unordered_map<std::string, std::string>& metadata) {
  const auto recorded = metadata.find(std::string(kMeta) + "weights");
  if (recorded == metadata.end()) return;
  const auto package = entry_.artifact;
  const auto stem = std::filesystem::path(package).stem().string();
  const auto name = stem + ".weights.safetensors";
  if (!entry_.file_sha256.count(name)) {
    throw EngineMismatch("the manifest does not list " + printable(name) + ", which " + printable(package) + " needs");
  }
  const auto file = manifest.folder / name;
  const auto table = weights_table(recorded->second, package);
  std::map<std::string, at::Tensor> tensors;
  try {
    tensors = read_safetensors(file);
  } catch (const std::runtime_error& failure) {
    throw EngineMismatch(first_line(failure.what()));
  }
  // The first difference, in the Python loader's order (package_weights._difference): a tensor the table
  // lacks, then one the file lacks, then the first (by name) of another dtype or shape.
  const auto differs = [&](const std::string& why) {
    return EngineMismatch(name + " is not the weights " + package + " was built for: " + why);
  };
  for (const auto& [tensor_name, _] : tensors) {
    if (!table.count(tensor_name)) throw differs("it holds " + printable(tensor_name) + ", which the package does not know");
  }
  for (const auto& [tensor_name, _] : table) {
    if (!tensors.count(tensor_name)) throw differs("it lacks " + printable(tensor_name));
  }
  for (const auto& [tensor_name, expected] : table) {
    const auto& tensor = tensors.at(tensor_name);
    const auto dtype = safetensors_dtype(expected.first);
    if (!dtype || *dtype != tensor.scalar_type() || tensor.sizes() != at::IntArrayRef(expected.second)) {
      throw differs(printable(tensor_name) + " is " + safetensors_dtype_name(tensor.scalar_type()) + " " +
                    c10::str(tensor.sizes()) + ", the package expects " + printable(expected.first) + " " +
                    c10::str(at::IntArrayRef(expected.second)));
    }
  }
  for (const auto& fqn : loader_->get_constant_fqns()) {
    const auto it = tensors.find(fqn);
    if (it == tensors.end()) throw EngineMismatch(package + " needs a weight its table lacks: " + printable(fqn));
    weights_[fqn] = it->second.to(device_);
  }
  try {
    loader_->load_constants(weights_, /*use_inactive=*/false, /*check_full_update=*/true, /*user_managed=*/true);
  } catch (const std::exception& error) {
    throw EngineMismatch("cannot hand " + package + " its weights: " + first_line(error.what()));
  }
}

// The manifest's promises must hold for the package, as the Python loader requires (check_metadata in
// inductor_runner.py): its largest batch and length inside the compiled box (smaller ones are padded up
// into it), the same vocabulary (a build records it in both since recipe 8, so a manifest without it
// beside a package with it was edited: the Python loader refuses it too), and a pad id inside it (the
// runner pads with it, and an id past the table aborts the process inside the kernel).
void Encoder::check_manifest_fits(const std::string& path) const {
  const auto& promised = entry_.shapes;
  if (promised.max_batch > graph_.max_batch || promised.max_length > graph_.max_length) {
    throw EngineMismatch(path + " accepts at most " + std::to_string(graph_.max_batch) + " x " +
                         std::to_string(graph_.max_length) + ", the manifest promises " +
                         std::to_string(promised.max_batch) + " x " + std::to_string(promised.max_length) +
                         "; rebuild the engines");
  }
  if (entry_.vocab_size != vocab_size_) {  // none recorded (0) beside a package that records one: edited
    throw EngineMismatch(path + " embeds " + std::to_string(vocab_size_) + " tokens but the manifest says " +
                         (entry_.vocab_size ? std::to_string(entry_.vocab_size) : std::string("none")) +
                         "; rebuild the engines");
  }
  if (entry_.pad_id >= vocab_size_) {
    throw EngineMismatch("the manifest's " + entry_.kind + " pad_id " + std::to_string(entry_.pad_id) +
                         " is outside the " + std::to_string(vocab_size_) + "-token vocabulary of " + path +
                         "; rebuild the engines");
  }
}

std::string Encoder::refusal(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  if (input_ids.numel() > 0) {
    const auto [low, high] = torch::aminmax(input_ids);
    const auto lowest = low.item<int64_t>(), highest = high.item<int64_t>();
    if (lowest < 0 || highest >= vocab_size_) {
      return "token id " + std::to_string(lowest < 0 ? lowest : highest) + " is outside the " + entry_.kind +
             " vocabulary (ids 0 to " + std::to_string(vocab_size_ - 1) + ")";
    }
  }
  if (attention_mask.numel() > 0) {
    const auto [low, high] = torch::aminmax(attention_mask);
    if (low.item<int64_t>() < 0 || high.item<int64_t>() > 1) return "the attention mask must hold only 0 and 1";
  }
  return "";
}

Encoder::~Encoder() = default;

at::Tensor Encoder::embed(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  if (input_ids.dim() != 2 || input_ids.sizes() != attention_mask.sizes() || input_ids.size(0) == 0) {
    throw std::invalid_argument(entry_.kind + ": need matching non-empty [B, T] token ids and mask");
  }
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  if (batch > entry_.shapes.max_batch || length > entry_.shapes.max_length) {
    throw std::invalid_argument(entry_.kind + ": batch " + std::to_string(batch) + " x " + std::to_string(length) +
                                " tokens is outside the engine's range (<= " +
                                std::to_string(entry_.shapes.max_batch) + " x " +
                                std::to_string(entry_.shapes.max_length) + ")");
  }
  const auto cpu_ids = input_ids.to(torch::kCPU, torch::kInt64);
  const auto cpu_mask = attention_mask.to(torch::kCPU, torch::kInt64);
  if (const auto why = refusal(cpu_ids, cpu_mask); !why.empty()) throw std::invalid_argument(entry_.kind + ": " + why);
  // Right-pad into the box: length to a multiple (and the minimum) with pad id / mask 0, batch up to the
  // minimum with copies of row 0 -- the Python runner's rule, so both give the same numbers.
  const auto [rows, cols] = computed_shape(batch, length);
  auto ids = torch::full({rows, cols}, entry_.pad_id, torch::kInt64);
  auto mask = torch::zeros({rows, cols}, torch::kInt64);
  using torch::indexing::Slice;
  ids.index_put_({Slice(0, batch), Slice(0, length)}, cpu_ids);
  mask.index_put_({Slice(0, batch), Slice(0, length)}, cpu_mask);
  if (rows > batch) {
    ids.index_put_({Slice(batch, rows)}, ids[0]);
    mask.index_put_({Slice(batch, rows)}, mask[0]);
  }
  torch::NoGradGuard no_grad;
  // The AOTI runner launches on the current CUDA device's current stream: make that this engine's device
  // (cuda:N need not be the thread's current device), as the Python runner's torch.cuda.device guard does.
  c10::OptionalDeviceGuard device_guard;
  if (device_.is_cuda()) device_guard.reset_device(device_);
  const int64_t ooms_before = device_ooms(device_);
  const std::string where = entry_.kind + " ran out of memory on " + device_.str() + " (batch " +
                            std::to_string(batch) + " x " + std::to_string(length) + " tokens): ";
  try {
#ifdef VIRNUCPRO_TEST_HOOKS
    if (injected_oom_rows() >= 0 && batch > injected_oom_rows()) {
      throw OutOfMemory(where + "injected by VIRNUCPRO_HOST_TEST_OOM_ROWS");
    }
#endif
    auto outputs = loader_->run({ids.to(device_), mask.to(device_)});
    auto pooled = outputs.at(0).slice(0, 0, batch).to(torch::kCPU, torch::kFloat32).contiguous();
#ifdef VIRNUCPRO_TEST_HOOKS
    inject_nan(pooled);
#endif
    return pooled;
  } catch (const OutOfMemory&) {
    throw;
  } catch (const c10::OutOfMemoryError& error) {
    throw OutOfMemory(where + first_line(error.what()));
  } catch (const std::exception& error) {
    if (says_out_of_memory(error.what()) || device_ooms(device_) > ooms_before) {
      throw OutOfMemory(where + first_line(error.what()));
    }
    throw;
  }
}

std::pair<int64_t, int64_t> Encoder::computed_shape(int64_t batch, int64_t length) const {
  return {std::max(batch, graph_.min_batch),
          std::max(round_up(length, graph_.sequence_multiple), graph_.min_length)};
}

EngineSet::EngineSet(const std::filesystem::path& folder, const c10::Device& device, bool verify_files)
    : manifest_(EngineManifest::read(folder)), device_(device) {
  if (const auto problems = manifest_.mismatches(device, verify_files); !problems.empty()) {
    throw EngineMismatch("engines in " + folder.string() + " cannot be used here: " + problems +
                         ". Rebuild them with `virnucpro-trt build --backend inductor ... -o " + folder.string() +
                         "`");
  }
  dnabert_ = std::make_unique<Encoder>(manifest_, "dnabert-s", device);
  esm_ = std::make_unique<Encoder>(manifest_, "esm2", device);
  classifier_ = std::make_unique<Classifier>(folder / manifest_.models.at("classifier").artifact, device);
  const int64_t width = dnabert_->dim() + esm_->dim();
  if (classifier_->input_dim() != width) {
    throw EngineMismatch("the classifier takes " + std::to_string(classifier_->input_dim()) +
                         " features but the encoders give " + std::to_string(width));
  }
}

}  // namespace virnucpro
