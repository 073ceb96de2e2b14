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
#include <cstdlib>

#ifdef VIRNUCPRO_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "virnucpro/runtime.h"

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

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

#ifdef VIRNUCPRO_TEST_HOOKS
// Fault injection for tests (no device can be made to run out of memory on demand), compiled only into
// the test suite's builds (CMake option VIRNUCPRO_TEST_HOOKS): VIRNUCPRO_HOST_TEST_OOM_ROWS=N makes every
// call on a batch of more than N rows fail as out of memory before it runs. Read once.
int64_t injected_oom_rows() {
  static const int64_t rows = [] {
    const char* value = std::getenv("VIRNUCPRO_HOST_TEST_OOM_ROWS");
    return value ? std::strtoll(value, nullptr, 10) : -1;
  }();
  return rows;
}
#endif

constexpr const char* kMeta = "virnucpro.";

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

std::string meta(const std::unordered_map<std::string, std::string>& metadata, const std::string& key,
                 const std::string& file) {
  const auto it = metadata.find(kMeta + key);
  if (it == metadata.end()) {
    throw EngineMismatch(file + " was not built by virnucpro's inductor backend (no " + kMeta + key + ")");
  }
  return it->second;
}

}  // namespace

Encoder::Encoder(const EngineManifest& manifest, const std::string& kind, const c10::Device& device)
    : entry_(manifest.models.at(kind)), device_(device) {
  const auto path = (manifest.folder / entry_.artifact).string();
  const c10::DeviceIndex index = device.is_cuda() ? (device.has_index() ? device.index() : 0) : -1;
  loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
  const auto metadata = loader_->get_metadata();
  const std::string found = meta(metadata, "kind", path) + "/" + meta(metadata, "precision", path) + "/" +
                            meta(metadata, "dim", path);
  const std::string expected = kind + "/" + manifest.precision + "/" + std::to_string(entry_.dim);
  if (found != expected) {
    throw EngineMismatch(path + " holds " + found + " but the manifest promises " + expected);
  }
  graph_.min_batch = std::stoll(meta(metadata, "graph.min_batch", path));
  graph_.max_batch = std::stoll(meta(metadata, "graph.max_batch", path));
  graph_.min_length = std::stoll(meta(metadata, "graph.min_length", path));
  graph_.max_length = std::stoll(meta(metadata, "graph.max_length", path));
  graph_.sequence_multiple = std::stoll(meta(metadata, "graph.sequence_multiple", path));
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
  // Right-pad into the box: length to a multiple (and the minimum) with pad id / mask 0, batch up to the
  // minimum with copies of row 0 -- the Python runner's rule, so both give the same numbers.
  const auto [rows, cols] = computed_shape(batch, length);
  auto ids = torch::full({rows, cols}, entry_.pad_id, torch::kInt64);
  auto mask = torch::zeros({rows, cols}, torch::kInt64);
  using torch::indexing::Slice;
  ids.index_put_({Slice(0, batch), Slice(0, length)}, input_ids.to(torch::kCPU, torch::kInt64));
  mask.index_put_({Slice(0, batch), Slice(0, length)}, attention_mask.to(torch::kCPU, torch::kInt64));
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
    return outputs.at(0).slice(0, 0, batch).to(torch::kCPU, torch::kFloat32).contiguous();
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
