// Upstream's MLP classifier from the engine directory's safetensors file.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include "virnucpro/runtime.h"
#include "virnucpro/text.h"

namespace virnucpro {
namespace {

// The Python loader's bound on a classifier file (models/pickle_guard.py MAX_CLASSIFIER_BYTES).
constexpr std::uintmax_t kMaxClassifierBytes = std::uintmax_t{256} << 20;

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
