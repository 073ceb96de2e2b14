// Upstream's MLP classifier from the engine directory's safetensors file, and the safetensors reader.
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include <c10/core/DeviceGuard.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "virnucpro/runtime.h"

namespace virnucpro {

std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& file,
                                                   std::map<std::string, std::string>* metadata) {
  // Format: u64 little-endian header size, a JSON header {name: {dtype, shape, data_offsets}, __metadata__},
  // then the raw little-endian data. (No C++ safetensors library is available to the project's builds.)
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + file.string());
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  const auto file_size = std::filesystem::file_size(file);
  if (!in || header_size > file_size - 8) throw std::runtime_error(file.string() + " is not a safetensors file");
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  const auto data_start = 8 + header_size;
  const auto parsed = nlohmann::json::parse(header);
  static const std::map<std::string, at::ScalarType> dtypes = {
      {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong}};
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, info] : parsed.items()) {
    if (name == "__metadata__") {
      if (metadata) {
        for (const auto& [key, value] : info.items()) (*metadata)[key] = value.get<std::string>();
      }
      continue;
    }
    const auto dtype = dtypes.find(info.at("dtype").get<std::string>());
    if (dtype == dtypes.end()) throw std::runtime_error(file.string() + ": unsupported dtype for " + name);
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
    auto tensor = torch::empty(shape, torch::TensorOptions().dtype(dtype->second));
    const auto bytes = offsets.at(1) - offsets.at(0);
    if (bytes != tensor.nbytes() || data_start + offsets.at(1) > file_size) {
      throw std::runtime_error(file.string() + ": bad offsets for " + name);
    }
    in.seekg(static_cast<std::streamoff>(data_start + offsets.at(0)));
    in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
    out.emplace(name, tensor);
  }
  return out;
}

Classifier::Classifier(const std::filesystem::path& safetensors_file, const c10::Device& device)
    : device_(device) {
  std::map<std::string, std::string> metadata;
  tensors_ = read_safetensors(safetensors_file, &metadata);
  for (const char* name : {"hidden_layer.weight", "hidden_layer.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
                           "bn1.running_var", "output_layer.weight", "output_layer.bias"}) {
    if (!tensors_.count(name)) throw EngineMismatch(safetensors_file.string() + " has no " + name);
    tensors_[name] = tensors_[name].to(device_, torch::kFloat32);
  }
  if (const auto it = metadata.find("bn_eps"); it != metadata.end()) bn_eps_ = std::stod(it->second);
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
