// Reading and checking an engine directory's manifest.json (schema virnucpro-trt/engine-manifest v2).
// The manifest is read as hostile input: every file it names must be a plain name inside the folder,
// and every file must have the SHA-256 recorded beside it before anything is loaded.
#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "virnucpro/bounded_json.h"
#include "virnucpro/text.h"

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif
#include <torch/cuda.h>

#include "virnucpro/runtime.h"

#ifdef VIRNUCPRO_WITH_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef VIRNUCPRO_WITH_OPENSSL
#include <openssl/evp.h>
#endif

namespace virnucpro {
namespace {

constexpr const char* kSchema = "virnucpro-trt/engine-manifest";
constexpr int kSchemaVersion = 2;
constexpr const char* kModelKinds[] = {"dnabert-s", "esm2", "classifier"};

// A plain file name: one path component, not "." or "..", no separator, no NUL.
bool plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

// FOLDER/NAME resolved, when it stays inside FOLDER (symlinks followed; a link to a file in a subfolder
// stays inside, as the Python runtime's files/names.py member_path has it); empty otherwise, with WHY
// saying which: a name past NAME_MAX or a link loop cannot be resolved at all, which is not "outside".
std::filesystem::path inside(const std::filesystem::path& folder, const std::string& name, std::string& why) {
  std::error_code ec;
  const auto root = std::filesystem::weakly_canonical(folder, ec);
  const auto target = ec ? std::filesystem::path() : std::filesystem::weakly_canonical(folder / name, ec);
  if (ec) {
    why = "cannot be resolved (" + ec.message() + ")";
    return {};
  }
  const auto relative = target.lexically_relative(root);
  if (relative.empty() || relative == "." || *relative.begin() == "..") {
    why = "resolves outside " + folder.string();
    return {};
  }
  return target;
}

// "2.11.0+cu130" -> "2.11.0": a libtorch build tag (+cpu, +cu130) does not change the package ABI the
// engine was compiled against, the release does.
std::string release(const std::string& version) { return version.substr(0, version.find('+')); }

std::string current_arch(const c10::Device& device) {
  if (!device.is_cuda()) return "cpu";
#ifdef VIRNUCPRO_WITH_CUDA
  cudaDeviceProp props{};
  if (cudaGetDeviceProperties(&props, device.has_index() ? device.index() : 0) != cudaSuccess) {
    return "unknown";
  }
  return "sm" + std::to_string(props.major) + std::to_string(props.minor);
#else
  return "unknown (runtime built without CUDA)";
#endif
}

// A manifest integer: a JSON integer (not 2.7, "3", true or 2^64-1, which get<int64_t> would silently
// truncate or wrap) in [low, high]; anything else is refused with the field's name.
int64_t integer(const nlohmann::json& value, const std::string& field, int64_t low, int64_t high) {
  constexpr auto kLargest = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  const bool fits =
      value.is_number_integer() && (!value.is_number_unsigned() || value.get<uint64_t>() <= kLargest);
  if (fits) {
    const auto number = value.get<int64_t>();
    if (number >= low && number <= high) return number;
  }
  // A scalar is shown (cut short); anything else by its type only (dumping a deep array recurses).
  std::string shown = value.is_primitive() ? value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                                           : std::string("a JSON ") + value.type_name();
  if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
  throw EngineMismatch(field + " must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                       "], not " + shown);
}

// An encoder's promised shape range: positive, bounded, min <= (opt <=) max; opt_* are only checked.
ShapeBox shape_box(const nlohmann::json& s, const std::string& field) {
  if (!s.is_object()) throw EngineMismatch(field + " must be an object of min/max batch and length");
  ShapeBox box;
  box.min_batch = integer(s.at("min_batch"), field + ".min_batch", 1, kMaxBatch);
  box.max_batch = integer(s.at("max_batch"), field + ".max_batch", box.min_batch, kMaxBatch);
  box.min_length = integer(s.at("min_length"), field + ".min_length", 1, kMaxLength);
  box.max_length = integer(s.at("max_length"), field + ".max_length", box.min_length, kMaxLength);
  if (s.contains("opt_batch")) integer(s.at("opt_batch"), field + ".opt_batch", box.min_batch, box.max_batch);
  if (s.contains("opt_length")) integer(s.at("opt_length"), field + ".opt_length", box.min_length, box.max_length);
  return box;
}

bool is_encoder(const std::string& kind) { return kind == "dnabert-s" || kind == "esm2"; }

// Bounds on device.instruction_sets (a real x86 list is ~80 names of a few letters).
constexpr size_t kMaxInstructionSets = 4096;
constexpr size_t kMaxInstructionSetName = 64;

// This CPU's instruction-set extensions: Linux's /proc/cpuinfo `flags` (x86) or `Features` (Arm) line,
// empty where there is none. The build records a filtered subset of its CPU's (environment.py keeps
// the instruction-set flags only); a recorded name missing here is one this CPU may not execute.
std::set<std::string> cpu_instruction_sets(const std::filesystem::path& cpuinfo = "/proc/cpuinfo") {
  std::ifstream in(cpuinfo);
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key != "flags" && key != "Features") continue;
    std::istringstream words(line.substr(colon + 1));
    std::set<std::string> found;
    for (std::string word; words >> word;) found.insert(word);
    return found;
  }
  return {};
}

// The manifest's fields into `m`; throws nlohmann's exceptions for a missing field or a wrong type and
// EngineMismatch for a value out of range.
void read_fields(const nlohmann::json& data, EngineManifest& m) {
  m.schema_version = static_cast<int>(integer(data.at("schema_version"), "schema_version", 0, 1 << 20));
  m.backend = data.at("backend").get<std::string>();
  m.precision = data.at("precision").get<std::string>();
  m.device_type = data.at("device").at("type").get<std::string>();
  m.device_arch = data.at("device").value("arch", "");
  if (const auto& device = data.at("device"); device.contains("instruction_sets")) {
    const auto& sets = device.at("instruction_sets");
    if (!sets.is_array() || sets.size() > kMaxInstructionSets) {
      throw EngineMismatch("device.instruction_sets must be a list of at most " +
                           std::to_string(kMaxInstructionSets) + " names");
    }
    for (const auto& name : sets) {
      if (!name.is_string() || name.get<std::string>().empty() ||
          name.get<std::string>().size() > kMaxInstructionSetName ||
          name.get<std::string>().find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
              std::string::npos) {
        throw EngineMismatch("device.instruction_sets must hold instruction-set names");
      }
      m.instruction_sets.push_back(name.get<std::string>());
    }
  }
  // Blocks are looked at in place (json::value() would copy them), and typed as the Python reader types
  // them: libraries an object, build an object when present, models exactly the three kinds.
  const auto& libraries = data.at("libraries");
  if (!libraries.is_object()) throw EngineMismatch("'libraries' must be an object");
  m.torch_version = libraries.value("torch", "");
  if (const auto build = data.find("build"); build != data.end()) {
    if (!build->is_object()) throw EngineMismatch("'build' must be an object");
    if (const auto budget = build->find("max_batch_tokens"); budget != build->end()) {  // null is no budget
      m.max_batch_tokens = integer(*budget, "build.max_batch_tokens", kMinBatchTokens, kMaxBatchTokens);
    }
  }
  const auto& models = data.at("models");
  const bool three = models.is_object() && models.size() == std::size(kModelKinds) &&
                     std::all_of(std::begin(kModelKinds), std::end(kModelKinds),
                                 [&](const char* kind) { return models.contains(kind); });
  if (!three) throw EngineMismatch("'models' must hold exactly dnabert-s, esm2, classifier");
  for (const auto& [kind, entry] : models.items()) {
    ModelEntry e;
    e.kind = kind;
    e.artifact = entry.at("artifact").get<std::string>();
    e.file_sha256 = entry.at("file_sha256").get<std::map<std::string, std::string>>();
    for (const auto& [name, sha] : e.file_sha256) {
      if (!plain_name(name)) throw EngineMismatch("'" + printable(name) + "' is not a plain file name");
    }
    if (!plain_name(e.artifact) || !e.file_sha256.count(e.artifact)) {
      throw EngineMismatch("the " + kind + " artifact '" + printable(e.artifact) +
                           "' is not a plain file name with a recorded SHA-256");
    }
    const std::string suffix = ".safetensors";  // what the classifier reader reads (manifest.py has the rule)
    if (kind == "classifier" && (e.artifact.size() < suffix.size() ||
                                 e.artifact.compare(e.artifact.size() - suffix.size(), suffix.size(), suffix))) {
      throw EngineMismatch("models.classifier: the classifier of an engine directory must be .safetensors");
    }
    const std::string field = "models." + kind;
    e.dim = integer(entry.at("dim"), field + ".dim", 1, kMaxDim);
    e.pad_id = integer(entry.at("pad_id"), field + ".pad_id", 0, kMaxVocab - 1);
    if (entry.contains("vocab_size")) {  // written since the host checks ids; the package's is the rule
      e.vocab_size = integer(entry.at("vocab_size"), field + ".vocab_size", 0, kMaxVocab);
    }
    if (is_encoder(kind)) e.shapes = shape_box(entry.at("shapes"), field + ".shapes");
    m.models.emplace(kind, e);
  }
}

}  // namespace

EngineManifest EngineManifest::read(const std::filesystem::path& folder) {
  const auto path = folder / "manifest.json";
  std::error_code error;
  if (std::filesystem::is_symlink(std::filesystem::symlink_status(path, error))) {
    // as the Python reader has it: like every file of the set, a plain file inside the folder
    throw EngineMismatch(path.string() + " is a symbolic link; a manifest is a plain file in its folder");
  }
  const auto status = std::filesystem::status(path, error);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    throw EngineMismatch(path.string() + " is not a regular file");  // a FIFO would block, /dev/zero never end
  }
  // The Python reader's bound (engines/manifest.py): a real manifest is a few KB.
  constexpr std::uintmax_t kMaxManifestBytes = std::uintmax_t{8} << 20;
  if (std::filesystem::exists(status) && std::filesystem::file_size(path, error) > kMaxManifestBytes) {
    throw EngineMismatch(path.string() + " is larger than a manifest can be (8 MiB)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw EngineMismatch(folder.string() + " is not an engine directory (no manifest.json); build one with "
                         "`virnucpro-trt build --backend inductor`");
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  nlohmann::json data;
  try {
    data = parse_bounded(python_constants_as_null(text));  // what Python's json reads
  } catch (const nlohmann::json::exception& error) {
    throw EngineMismatch(path.string() + " is not valid JSON: " + first_line(error.what()).substr(0, 300));
  } catch (const JsonRefused& error) {
    throw EngineMismatch(path.string() + " is not valid JSON: " + error.what());
  }
  // find() on anything but an object is end(): an array or a number is no manifest either (json::value()
  // threw a type_error for them, exit 1 with nlohmann's text).
  if (const auto schema = data.find("schema"); schema == data.end() || *schema != kSchema) {
    throw EngineMismatch(path.string() + " is not a virnucpro-trt engine manifest");
  }
  EngineManifest m;
  m.folder = folder;
  try {
    read_fields(data, m);
  } catch (const nlohmann::json::exception& error) {
    throw EngineMismatch(path.string() + " lacks a field this runtime needs: " + error.what());
  } catch (const EngineMismatch& error) {
    throw EngineMismatch(path.string() + ": " + error.what());
  }
  return m;
}

std::string EngineManifest::mismatches(const c10::Device& device, bool verify_files) const {
  std::vector<std::string> problems;
  if (schema_version != kSchemaVersion) {
    problems.push_back("manifest schema version " + std::to_string(schema_version) + ", this runtime reads " +
                       std::to_string(kSchemaVersion));
  }
  if (backend != "inductor") {
    problems.push_back("backend " + printable(backend) +
                       " (the C++ host runtime runs AOTInductor engine sets: build with --backend inductor)");
  }
  const std::string have_type = device.is_cuda() ? "cuda" : "cpu";
  if (device_type != have_type) {
    problems.push_back("built for " + printable(device_type) + ", running on " + have_type);
  } else if (device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      problems.push_back("built for CUDA, but the linked libtorch sees no CUDA device");
    } else if (const auto arch = current_arch(device); arch != device_arch) {
      problems.push_back("built for " + printable(device_arch) + ", running on " + arch);
    }
  } else if (!instruction_sets.empty()) {  // a CPU engine run here without them would die of SIGILL
    const auto have = cpu_instruction_sets();
    std::set<std::string> lacking;
    for (const auto& name : instruction_sets) {
      if (!have.count(name)) lacking.insert(name);
    }
    if (!lacking.empty()) {
      std::string listed;
      size_t shown = 0;
      for (const auto& name : lacking) {
        if (shown++ == 6) break;
        listed += (listed.empty() ? "" : ", ") + printable(name);
      }
      problems.push_back("built on a CPU with instructions this one lacks (" + listed +
                         (lacking.size() > 6 ? " ..." : "") + ")");
    }
  }
  if (!torch_version.empty() && release(torch_version) != release(TORCH_VERSION)) {
    problems.push_back("built with torch " + printable(torch_version) + ", linked libtorch is " + TORCH_VERSION);
  }
  for (const char* kind : {"dnabert-s", "esm2", "classifier"}) {
    const auto it = models.find(kind);
    if (it == models.end()) {
      problems.push_back(std::string("the engines hold no ") + kind + " model");
      continue;
    }
    for (const auto& [name, recorded] : it->second.file_sha256) {
      std::string why;
      const auto file = inside(folder, name, why);
      if (file.empty()) {
        problems.push_back(printable(name) + " " + why + " (refused)");
      } else if (!std::filesystem::exists(file)) {
        problems.push_back(folder.string() + "/" + printable(name) + " is missing");
      } else if (!std::filesystem::is_regular_file(file)) {
        problems.push_back(folder.string() + "/" + printable(name) + " is not a regular file");
      } else if (verify_files) {
        const auto sha = file_sha256(file);
        if (sha.empty()) {
          problems.push_back("this runtime was built without OpenSSL and cannot check " + printable(name) +
                             " (rebuild it with OpenSSL, or pass --no-verify to trust the folder)");
        } else if (sha != recorded) {
          problems.push_back(printable(name) + " does not match its sha256 in the manifest");
        }
      }
    }
  }
  // The first few, then a count: a manifest naming 50,000 missing files made one line of a megabyte.
  constexpr size_t kShown = 8;
  std::ostringstream out;
  for (size_t i = 0; i < problems.size() && i < kShown; ++i) out << (i ? "; " : "") << problems[i];
  if (problems.size() > kShown) out << "; and " << problems.size() - kShown << " more";
  return out.str();
}

std::string file_sha256(const std::filesystem::path& file) {
#ifdef VIRNUCPRO_WITH_OPENSSL
  std::ifstream in(file, std::ios::binary);
  if (!in) return "";
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
#else
  (void)file;
  return "";
#endif
}

}  // namespace virnucpro
