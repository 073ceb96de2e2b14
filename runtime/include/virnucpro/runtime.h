// virnucpro host runtime: loads an engine directory written by `virnucpro-trt build --backend inductor`
// and runs it from C++ (the path production inference hosts link, without Python).
//
// What it does, and why it is shaped so:
//  * The manifest is checked before anything loads (schema, backend, device, libtorch version, artifact
//    sha256) -- the same refusal rules as the Python runtime, so a host never runs an engine built for
//    another GPU, another torch or from other files.
//  * Encoders are AOTInductor packages (.pt2) loaded with torch::inductor::AOTIModelPackageLoader. Each
//    package describes its own accepted shape box in its metadata (virnucpro.graph.*); batches are
//    right-padded into it exactly as the Python runner does, so both give the same numbers. Since build
//    recipe 9 the weights are a safetensors file beside the package, checked against the table the
//    package records (virnucpro.weights) and handed to the loader with load_constants.
//  * The classifier is the safetensors file of the engine directory (upstream's MLP, converted once
//    from its pickle by the Python side; C++ never unpickles anything).
//  * Tokenisation stays outside: inputs are token ids and attention masks (int64 [B, T]), because the
//    DNABERT-S BPE tokenizer lives in the Hugging Face tokenizers library.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace virnucpro {

// A manifest that does not fit this host (wrong backend, GPU, torch, damaged files...): the message
// says what differs and how to rebuild.
class EngineMismatch : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An engine call that failed for lack of device memory (encoder.cpp says how that is recognised). The
// batch loop (batching.h) splits the batch in halves and runs each, as the Python runtime does; a single
// item that does not fit is an error for the caller.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ShapeBox {
  int64_t min_batch = 1, max_batch = 1, min_length = 1, max_length = 1, sequence_multiple = 1;
};

// Bounds on the sizes a manifest or a package may declare: far beyond any real engine (ESM-2 15B is 5120
// wide with 33 tokens, the budget batcher caps batches at 4096 items, ESM-2 reads 1026 tokens), and small
// enough that no product of two of them overflows int64.
constexpr int64_t kMaxDim = int64_t{1} << 20;          // an encoder's width, the classifier's input width
constexpr int64_t kMaxVocab = int64_t{1} << 24;        // an encoder's vocabulary (token ids below it)
constexpr int64_t kMaxBatch = int64_t{1} << 20;        // rows of one engine call
constexpr int64_t kMaxLength = int64_t{1} << 20;       // tokens of one item
// The build's token budget, in the Python reader's range (manifest.py MIN_BATCH_TOKENS, settings.MAX_BATCH_TOKENS).
constexpr int64_t kMinBatchTokens = 16;
constexpr int64_t kMaxBatchTokens = int64_t{1} << 24;

struct ModelEntry {
  std::string kind;      // "dnabert-s", "esm2" or "classifier"
  std::string artifact;  // plain file name inside the engine directory (checked when read)
  std::map<std::string, std::string> file_sha256;  // every file the entry loads -> its SHA-256
  int64_t dim = 0;
  int64_t pad_id = 0;
  int64_t vocab_size = 0;  // 0: not recorded (the classifier; manifests older than the field)
  ShapeBox shapes;         // the manifest's promised range (max_batch, max_length)
};

struct EngineManifest {
  std::filesystem::path folder;
  int schema_version = 0;
  std::string backend, precision, device_type, device_arch, torch_version;
  std::map<std::string, ModelEntry> models;
  int64_t max_batch_tokens = 0;  // the build's token budget (build.max_batch_tokens); 0 when not recorded
  // device.instruction_sets: a CPU build's instruction-set extensions (AOTInductor compiles CPU engines
  // with -march=native, so the engine may use any of them); empty for CUDA and older manifests.
  std::vector<std::string> instruction_sets;

  // Reads FOLDER/manifest.json; throws EngineMismatch when it is missing or not a manifest.
  static EngineManifest read(const std::filesystem::path& folder);
  // Everything that stops this manifest from running on `device` with the linked libtorch
  // (empty when it fits). `verify_files` also hashes every file the manifest names (a build without
  // OpenSSL cannot, and says so instead of skipping the check).
  std::string mismatches(const c10::Device& device, bool verify_files = true) const;
};

// One loaded encoder engine.
class Encoder {
 public:
  Encoder(const EngineManifest& manifest, const std::string& kind, const c10::Device& device);
  ~Encoder();
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  // input_ids / attention_mask: int64 [B, T] (any device). Returns float32 [B, dim] on the CPU.
  // The host-to-device copy of the inputs and the copy of the result back happen here. Throws
  // OutOfMemory when the device ran out of memory during the call, std::invalid_argument for inputs
  // that `refusal` refuses.
  at::Tensor embed(const at::Tensor& input_ids, const at::Tensor& attention_mask);

  // Why int64 CPU ids/mask must not reach this engine (empty when they may): an id outside
  // [0, vocab_size) or a mask value other than 0/1. The compiled kernels check indices with asserts
  // that abort the process, so embed() refuses such inputs before any kernel runs, and a caller can ask
  // first for a whole input.
  std::string refusal(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

  // (rows, length) the graph runs for a batch of `batch` x `length`: the Python runner's padded_shape.
  std::pair<int64_t, int64_t> computed_shape(int64_t batch, int64_t length) const;

  const std::string& kind() const { return entry_.kind; }
  int64_t dim() const { return entry_.dim; }
  int64_t vocab_size() const { return vocab_size_; }  // the package's (virnucpro.vocab_size)
  int64_t max_batch() const { return entry_.shapes.max_batch; }    // the manifest's promise, which the
  int64_t max_length() const { return entry_.shapes.max_length; }  // Python batcher is held to as well
  const ShapeBox& graph() const { return graph_; }

 private:
  void check_manifest_fits(const std::string& path) const;
  void load_weights(const EngineManifest& manifest, const std::unordered_map<std::string, std::string>& metadata);

  ModelEntry entry_;
  ShapeBox graph_;
  int64_t vocab_size_ = 0;
  c10::Device device_;
  // The package's weights (recipe 9: the .weights.safetensors file beside it), used in place by loader_:
  // declared before it, so they outlive it.
  std::unordered_map<std::string, at::Tensor> weights_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

// Upstream's MLP: Linear -> BatchNorm1d (running statistics) -> ReLU -> Linear -> softmax, in fp32 on
// `device` (on a GPU there, as the Python runtime runs it; libtorch's default keeps TF32 off in matmuls).
// The file is checked as the Python loader checks a classifier (models/classifier.py): exactly its eight
// tensors, floating point, shapes that fit each other, finite values, variances >= 0, and a finite
// bn_eps > 0; anything else throws EngineMismatch (one line).
class Classifier {
 public:
  explicit Classifier(const std::filesystem::path& safetensors_file,
                      const c10::Device& device = c10::Device(c10::kCPU));
  // features float32 [N, input_dim] (any device) -> probabilities float32 [N, 2] on the CPU
  // (columns: others, virus).
  at::Tensor probabilities(const at::Tensor& features) const;
  int64_t input_dim() const;

 private:
  std::map<std::string, at::Tensor> tensors_;
  double bn_eps_ = 1e-5;
  c10::Device device_;
};

// The whole engine directory: checked manifest, both encoders, the classifier.
class EngineSet {
 public:
  EngineSet(const std::filesystem::path& folder, const c10::Device& device, bool verify_files = true);
  const EngineManifest& manifest() const { return manifest_; }
  const c10::Device& device() const { return device_; }
  Encoder& dnabert() { return *dnabert_; }
  Encoder& esm() { return *esm_; }
  const Classifier& classifier() const { return *classifier_; }

 private:
  EngineManifest manifest_;
  c10::Device device_;
  std::unique_ptr<Encoder> dnabert_, esm_;
  std::unique_ptr<Classifier> classifier_;
};

// The safetensors library's own bound is 100 MB; a classifier's header names eight tensors (~1 KB), ESM-2
// 3B's weights file ~600 (~70 KB), so 1 MiB is refused before a byte of it is read or allocated.
constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{1} << 20;

// Reads a safetensors file (F64/F32/F16/BF16/F8_E4M3/F8_E5M2/I64/I32/I8/U8/BOOL tensors) into CPU
// tensors; `metadata` gets __metadata__. The file is hostile input: a header over `max_header_bytes` is
// refused before it is read, and every tensor must have a known dtype, a shape whose byte count is its
// data's, and data inside the file that no other tensor's overlaps. Throws std::runtime_error (one line)
// naming the file otherwise.
std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& file,
                                                   std::map<std::string, std::string>* metadata = nullptr,
                                                   uint64_t max_header_bytes = kMaxSafetensorsHeaderBytes);

// The dtype a safetensors header names ("BF16"), if read_safetensors takes it, and back.
std::optional<at::ScalarType> safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(at::ScalarType dtype);

// Lower-case hex sha256 of a file (empty string when built without OpenSSL).
std::string file_sha256(const std::filesystem::path& file);

}  // namespace virnucpro
