// Upstream's MLP classifier from the engine directory's safetensors file, and the safetensors reader.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <c10/core/DeviceGuard.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "virnucpro/bounded_json.h"
#include "virnucpro/runtime.h"
#include "virnucpro/text.h"

namespace virnucpro {
namespace {

// The safetensors library's own bound is 100 MB; a classifier's header names eight tensors (~1 KB), so
// 1 MiB is refused before a byte of it is read or allocated.
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 20;
// The Python loader's bound on a classifier file (models/pickle_guard.py MAX_CLASSIFIER_BYTES).
constexpr std::uintmax_t kMaxClassifierBytes = std::uintmax_t{256} << 20;
constexpr size_t kMaxDims = 8;

const std::map<std::string, at::ScalarType>& safetensors_dtypes() {
  static const std::map<std::string, at::ScalarType> dtypes = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong}};
  return dtypes;
}

struct Entry {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data section
};

// One tensor's header entry: {"dtype": known, "shape": [d >= 0, ...], "data_offsets": [begin, end]}, with
// end - begin equal to the bytes its shape and dtype take.
Entry header_entry(const std::string& name, const nlohmann::json& info, const std::string& file) {
  const auto bad = [&](const std::string& why) {
    return std::runtime_error(file + ": tensor '" + printable(name) + "' " + why);
  };
  if (!info.is_object()) throw bad("is not described by an object");
  Entry e{name};
  const auto& dtypes = safetensors_dtypes();
  const auto dtype = info.value("dtype", nlohmann::json());
  const auto known = dtype.is_string() ? dtypes.find(dtype.get<std::string>()) : dtypes.end();
  if (known == dtypes.end()) throw bad("has an unsupported dtype");
  e.dtype = known->second;
  const auto shape = info.value("shape", nlohmann::json());
  const auto offsets = info.value("data_offsets", nlohmann::json());
  const auto natural = [](const nlohmann::json& v) { return v.is_number_unsigned(); };
  if (!shape.is_array() || shape.size() > kMaxDims || !std::all_of(shape.begin(), shape.end(), natural)) {
    throw bad("has no shape of at most " + std::to_string(kMaxDims) + " non-negative sizes");
  }
  if (!offsets.is_array() || offsets.size() != 2 || !natural(offsets[0]) || !natural(offsets[1])) {
    throw bad("has no data_offsets [begin, end]");
  }
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  // `span`: the bytes with every size 0 taken as 1, which libtorch's strides must hold even when the
  // tensor is empty ([0, 2^62, 2^62] ended in its "Stride calculation overflowed", exit 1).
  constexpr auto kLargest = uint64_t{std::numeric_limits<int64_t>::max()};
  uint64_t bytes = c10::elementSize(e.dtype), span = bytes;
  for (const auto& size : shape) {
    const auto d = size.get<uint64_t>();
    if (d > kLargest || __builtin_mul_overflow(bytes, d, &bytes) ||
        __builtin_mul_overflow(span, std::max<uint64_t>(d, 1), &span) || span > kLargest) {
      throw bad("has a shape too large for any file");
    }
    e.shape.push_back(static_cast<int64_t>(d));
  }
  if (e.end < e.begin || e.end - e.begin != bytes) {
    throw bad("has data_offsets of " + std::to_string(e.end - e.begin) + " bytes for a shape of " +
              std::to_string(bytes));
  }
  return e;
}

// The data ranges must tile the data section exactly, as the safetensors format requires: in order,
// without overlap or gap, the last ending at the end of the file (so no range lies outside it).
void check_layout(std::vector<Entry>& entries, uint64_t data_bytes, const std::string& file) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t at = 0;
  for (const auto& e : entries) {
    if (e.begin != at) {
      const std::string why = e.begin < at ? "overlaps another" : "leaves a gap before it";
      throw std::runtime_error(file + ": tensor '" + printable(e.name) + "' " + why);
    }
    at = e.end;
  }
  if (at != data_bytes) {
    throw std::runtime_error(file + ": the tensors cover " + std::to_string(at) + " bytes of its " +
                             std::to_string(data_bytes) + "-byte data section");
  }
}

}  // namespace

std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& file,
                                                   std::map<std::string, std::string>* metadata) {
  // Format: u64 little-endian header size, a JSON header {name: {dtype, shape, data_offsets}, __metadata__},
  // then the raw little-endian data. (No C++ safetensors library is available to the project's builds.)
  const auto where = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + where);
  std::error_code error;
  const auto file_size = std::filesystem::file_size(file, error);
  unsigned char size_bytes[8] = {};
  in.read(reinterpret_cast<char*>(size_bytes), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = header_size << 8 | size_bytes[i];
  if (error || !in || file_size < 8) throw std::runtime_error(where + " is not a safetensors file");
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    throw std::runtime_error(where + ": a header of " + std::to_string(header_size) + " bytes (at most " +
                             std::to_string(kMaxHeaderBytes) + " are read, within the file)");
  }
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  if (!in) throw std::runtime_error("cannot read " + where);
  nlohmann::json parsed;
  try {
    parsed = parse_bounded(header);
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error(where + ": its header is not a JSON object");
  } catch (const JsonRefused& refused) {
    throw std::runtime_error(where + ": its header is refused: " + refused.what());
  }
  if (!parsed.is_object()) throw std::runtime_error(where + ": its header is not a JSON object");
  std::vector<Entry> entries;
  for (const auto& [name, info] : parsed.items()) {
    if (name != "__metadata__") {
      entries.push_back(header_entry(name, info, where));
      continue;
    }
    if (!info.is_object()) throw std::runtime_error(where + ": __metadata__ is not an object of strings");
    for (const auto& [key, value] : info.items()) {
      if (!value.is_string()) throw std::runtime_error(where + ": __metadata__ is not an object of strings");
      if (metadata) (*metadata)[key] = value.get<std::string>();
    }
  }
  const uint64_t data_start = 8 + header_size;
  check_layout(entries, file_size - data_start, where);
  std::map<std::string, at::Tensor> out;
  for (const auto& e : entries) {
    auto tensor = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    in.seekg(static_cast<std::streamoff>(data_start + e.begin));
    in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    if (!in) throw std::runtime_error("cannot read " + where);
    out.emplace(e.name, tensor);
  }
  return out;
}

namespace {

constexpr const char* kTensorNames[] = {"hidden_layer.weight", "hidden_layer.bias",   "bn1.weight",
                                        "bn1.bias",            "bn1.running_mean",    "bn1.running_var",
                                        "output_layer.weight", "output_layer.bias"};
// BatchNorm's epsilon when the file states none: torch's default.
constexpr double kDefaultEps = 1e-5;
// The largest the Python loader takes (models/classifier.py MAX_BN_EPS, the encoders' LayerNorm bound): a
// larger one flattens the normalisation, every score alike (1e6 turned a 0.81 "others" call into 0.53 virus).
constexpr double kMaxEps = 0.1;

// Upstream's shapes (models/classifier.py _check_shapes): hidden_layer.weight [H, D] fixes the others.
void check_shapes(const std::map<std::string, at::Tensor>& t, const std::string& file) {
  const auto& hidden = t.at("hidden_layer.weight");
  if (hidden.dim() != 2 || hidden.size(0) == 0 || hidden.size(1) == 0 || hidden.size(1) > kMaxDim) {
    throw EngineMismatch(file + ": 'hidden_layer.weight' has shape " + c10::str(hidden.sizes()) +
                         ", expected [hidden, input] > 0");
  }
  const int64_t h = hidden.size(0);
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"hidden_layer.bias", {h}}, {"bn1.weight", {h}},           {"bn1.bias", {h}},         {"bn1.running_mean", {h}},
      {"bn1.running_var", {h}},   {"output_layer.weight", {2, h}}, {"output_layer.bias", {2}}};
  for (const auto& [name, shape] : shapes) {
    if (t.at(name).sizes() != at::IntArrayRef(shape)) {
      throw EngineMismatch(file + ": '" + name + "' has shape " + c10::str(t.at(name).sizes()) + ", expected " +
                           c10::str(at::IntArrayRef(shape)));
    }
  }
}

// The bn_eps the file's metadata carries as text (Python's repr of a float; the default when absent):
// the whole text a decimal number (digits, '.', an exponent: what repr writes and the Python loader's
// grammar takes; strtod alone also reads hex and skips leading blanks), finite, > 0 and at most kMaxEps,
// as the Python loader requires (models/classifier.py _checked_eps): BatchNorm divides by
// sqrt(running_var + eps). A subnormal value (strtod's ERANGE) is a number > 0 there too.
double metadata_eps(const std::map<std::string, std::string>& metadata, const std::string& file) {
  const auto it = metadata.find("bn_eps");
  if (it == metadata.end()) return kDefaultEps;
  const std::string& text = it->second;
  const bool decimal = !text.empty() && text.find_first_not_of("0123456789.eE+-") == std::string::npos &&
                       text.find_first_of("0123456789") != std::string::npos;
  char* end = nullptr;
  const double eps = decimal ? std::strtod(text.c_str(), &end) : 0.0;
  const bool whole = decimal && end == text.c_str() + text.size();
  if (!whole || !std::isfinite(eps) || eps <= 0) {
    throw EngineMismatch(file + ": metadata bn_eps '" + printable(text) + "' is not a finite number > 0");
  }
  if (eps > kMaxEps) {
    throw EngineMismatch(file + ": metadata bn_eps '" + printable(text) + "' is more than 0.1" +
                         ": no BatchNorm is trained with it, and it flattens the normalisation (every score alike)");
  }
  return eps;
}

}  // namespace

Classifier::Classifier(const std::filesystem::path& safetensors_file, const c10::Device& device)
    : device_(device) {
  const auto file = safetensors_file.string();
  std::error_code error;
  if (const auto size = std::filesystem::file_size(safetensors_file, error); !error && size > kMaxClassifierBytes) {
    throw EngineMismatch(file + " is " + std::to_string(size) + " bytes, far too large for a classifier");
  }
  std::map<std::string, std::string> metadata;
  try {
    tensors_ = read_safetensors(safetensors_file, &metadata);
  } catch (const std::runtime_error& failure) {
    throw EngineMismatch(failure.what());
  }
  for (const auto& [name, tensor] : tensors_) {
    if (std::find(std::begin(kTensorNames), std::end(kTensorNames), name) == std::end(kTensorNames)) {
      throw EngineMismatch(file + " holds '" + printable(name) + "', which is no classifier tensor");
    }
  }
  for (const char* name : kTensorNames) {
    if (!tensors_.count(name)) throw EngineMismatch(file + " has no " + name);
    if (!tensors_[name].is_floating_point()) {
      throw EngineMismatch(file + ": '" + name + "' holds " + c10::toString(tensors_[name].scalar_type()) +
                           " values, expected floating point");
    }
  }
  check_shapes(tensors_, file);
  // Finite weights and variances >= 0, as the Python loader requires (in fp32, where they are used):
  // NaN/Inf weights or a negative variance give NaN scores, written out as if they were answers.
  for (const char* name : kTensorNames) {
    tensors_[name] = tensors_[name].to(torch::kFloat32);
    if (!torch::isfinite(tensors_[name]).all().item<bool>()) {
      throw EngineMismatch(file + ": '" + name + "' holds NaN/Inf values (in fp32)");
    }
  }
  if ((tensors_["bn1.running_var"] < 0).any().item<bool>()) {
    throw EngineMismatch(file + ": 'bn1.running_var' holds negative variances");
  }
  bn_eps_ = metadata_eps(metadata, file);
  for (const char* name : kTensorNames) tensors_[name] = tensors_[name].to(device_);
}

int64_t Classifier::input_dim() const { return tensors_.at("hidden_layer.weight").size(1); }

at::Tensor Classifier::probabilities(const at::Tensor& features) const {
  torch::NoGradGuard no_grad;
  const auto& t = tensors_;
  c10::OptionalDeviceGuard device_guard;
  if (device_.is_cuda()) device_guard.reset_device(device_);
  auto x = torch::nn::functional::linear(features.to(device_, torch::kFloat32), t.at("hidden_layer.weight"),
                                         t.at("hidden_layer.bias"));
  x = (x - t.at("bn1.running_mean")) / torch::sqrt(t.at("bn1.running_var") + bn_eps_) * t.at("bn1.weight") +
      t.at("bn1.bias");
  x = torch::relu(x);
  const auto logits = torch::nn::functional::linear(x, t.at("output_layer.weight"), t.at("output_layer.bias"));
  auto probabilities = torch::softmax(logits, 1).to(torch::kCPU);
  // Finite embeddings and weights can still overflow to Inf logits and NaN scores; NaN compares false
  // both ways and would be written as a call. Refused, as the Python runtime does.
  const auto finite = torch::isfinite(probabilities).all(1);
  if (!finite.all().item<bool>()) {
    const auto bad = torch::nonzero(finite.logical_not()).flatten();
    throw std::runtime_error("the classifier produced NaN/Inf scores for " + std::to_string(bad.numel()) + " of " +
                             std::to_string(finite.numel()) + " frame(s) (e.g. #" +
                             std::to_string(bad[0].item<int64_t>()) + "); check the classifier's weights");
  }
  return probabilities;
}

}  // namespace virnucpro
