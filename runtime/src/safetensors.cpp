// The safetensors reader: the engine directory's classifier and the encoders' weights files.
//
// Format: u64 little-endian header size, a JSON header {name: {dtype, shape, data_offsets}, __metadata__},
// then the raw little-endian data. No C++ safetensors library is available to the project's builds, so
// the file is read here, as hostile input (runtime.h: the rules).
#include <algorithm>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "virnucpro/bounded_json.h"
#include "virnucpro/runtime.h"
#include "virnucpro/text.h"

namespace virnucpro {
namespace {

constexpr size_t kMaxDims = 8;

const std::map<std::string, at::ScalarType>& safetensors_dtypes() {
  static const std::map<std::string, at::ScalarType> dtypes = {
      {"F64", at::kDouble},         {"F32", at::kFloat},           {"F16", at::kHalf},
      {"BF16", at::kBFloat16},      {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
      {"I64", at::kLong},           {"I32", at::kInt},             {"I8", at::kChar},
      {"U8", at::kByte},            {"BOOL", at::kBool}};
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

std::optional<at::ScalarType> safetensors_dtype(const std::string& name) {
  const auto& dtypes = safetensors_dtypes();
  const auto known = dtypes.find(name);
  return known == dtypes.end() ? std::nullopt : std::optional<at::ScalarType>(known->second);
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  for (const auto& [name, known] : safetensors_dtypes()) {
    if (known == dtype) return name;
  }
  return c10::toString(dtype);
}

std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& file,
                                                   std::map<std::string, std::string>* metadata,
                                                   uint64_t max_header_bytes) {
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
  if (header_size > max_header_bytes || header_size > file_size - 8) {
    throw std::runtime_error(where + ": a header of " + std::to_string(header_size) + " bytes (at most " +
                             std::to_string(max_header_bytes) + " are read, within the file)");
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


}  // namespace virnucpro
