// virnucpro-host: run an engine directory from C++ on token ids saved by Python.
//
//   virnucpro-host ENGINE_DIR --check [--device D]
//   virnucpro-host ENGINE_DIR INPUTS.pt OUTPUTS.pt [--device cpu|cuda|cuda:N] [--no-verify]
//                  [--max-batch-tokens N] [--max-padding SHARE[:FLOOR]|none] [--cpu-threads N] [--warmup]
//                  [--timing FILE.json] [--print-batches]
//
// INPUTS.pt: torch.save((dna_ids, dna_mask, protein_ids, protein_mask)), int64 [N, T] each, right-padded,
// one row per kept frame. OUTPUTS.pt: (dnabert_embeddings [N, 768], esm_embeddings [N, 2560],
// probabilities [N, 2]) in input order, readable with torch.load. Each encoder runs its frames in
// token-budget batches (batching.h: the Python runtime's rule); --max-batch-tokens defaults to the budget
// the engines were built for, which is what the Python runtime uses for an engine directory.
// --max-padding is `predict --max-padding`: a batch closes before its padding passes SHARE of its computed
// tokens, once it computes more than FLOOR tokens (default none: batches fill the budget), so the host
// reproduces a Python run made with a cap.
// --warmup runs everything once untimed first (CUDA context, kernel loading, allocator growth are not
// throughput); --timing writes seconds per encoder and for the classifier, each measured between
// device-synchronised clock reads and including the host-to-device copies, as the Python runtime's
// stage clock measures, with each encoder's seconds inside its engine calls (embed_s) apart from the
// batching's own host work. --cpu-threads sets libtorch's intra-op threads for the host's CPU tensor
// work (default: libtorch's, one per core; on CUDA that work is small per batch, and a thread pool
// woken per operation may cost more than it saves). Exit codes as the Python CLI: 0 ok, 2 bad
// usage/input or engines that do not fit this host (one line on stderr), 1 any other failure.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/serialize.h>
#include <torch/torch.h>
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include "virnucpro/batching.h"
#include "virnucpro/runtime.h"
#include "virnucpro/tensor_archive.h"
#include "virnucpro/text.h"

namespace {

const char* const USAGE =
    "Usage: virnucpro-host ENGINE_DIR (--check | INPUTS.pt OUTPUTS.pt) "
    "[--device cpu|cuda|cuda:N] [--no-verify] [--max-batch-tokens N] "
    "[--max-padding SHARE[:FLOOR]|none] [--cpu-threads N] "
    "[--warmup] [--timing FILE] [--print-batches]\n";

// The one place an error line is printed: "Error: " and the message, through printable() (a longer cut
// than a name's), since a message may quote the files (libtorch's quoted a storage location from data.pkl,
// ESC, CR and BEL as they were) and must stay one line that reaches the terminal as plain text.
constexpr size_t kMaxErrorLine = 3000;
int error_line(const std::string& message, int code) {
  std::cerr << "Error: " << virnucpro::printable(message, kMaxErrorLine) << "\n";
  return code;
}

int usage(const std::string& message) {
  error_line(message, 2);
  std::cerr << USAGE;
  return 2;
}

struct Options {
  std::vector<std::string> positional;
  std::string device = "cpu", timing;
  bool check_only = false, verify = true, warmup = false, print_batches = false;
  int64_t max_batch_tokens = 0;  // 0: the engines' build budget
  int64_t cpu_threads = 0;       // 0: libtorch's default
  std::optional<virnucpro::PaddingCap> padding_cap;  // none: batches fill the budget
};

// The most --cpu-threads takes (far more than any host's cores).
constexpr int64_t kMaxCpuThreads = 4096;

// A positive integer option's value, or nullopt.
std::optional<int64_t> positive(const std::string& value) {
  size_t used = 0;
  int64_t parsed = 0;
  try {
    parsed = std::stoll(value, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != value.size() || parsed < 1) return std::nullopt;
  return parsed;
}

// Parsed options, or the one-line reason they are not usable.
std::optional<std::string> parse(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--device" && has_value) {
      options.device = argv[++i];
    } else if (arg == "--timing" && has_value) {
      options.timing = argv[++i];
      if (options.timing.empty()) return "--timing: expected a file name";
    } else if ((arg == "--max-batch-tokens" || arg == "--cpu-threads") && has_value) {
      const std::string value = argv[++i];
      const auto parsed = positive(value);
      if (!parsed) return arg + " " + value + ": expected a positive integer";
      // at::set_num_threads takes an int: 99999999999 became a pool of 1215752191 threads (~300 GB)
      if (arg == "--cpu-threads" && *parsed > kMaxCpuThreads) {
        return arg + " " + value + ": expected a positive integer of at most " + std::to_string(kMaxCpuThreads);
      }
      (arg == "--cpu-threads" ? options.cpu_threads : options.max_batch_tokens) = *parsed;
    } else if (arg == "--max-padding" && has_value) {
      const std::string value = argv[++i];
      std::string lower = value;
      std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
      if (lower == "none") {
        options.padding_cap.reset();
      } else {
        try {
          options.padding_cap = virnucpro::PaddingCap::parse(value);
        } catch (const std::invalid_argument& error) {
          return std::string("--max-padding: ") + error.what() + "; expected SHARE[:FLOOR] or none (e.g. 0.05:8192)";
        }
      }
    } else if (arg == "--check") {
      options.check_only = true;
    } else if (arg == "--no-verify") {
      options.verify = false;
    } else if (arg == "--warmup") {
      options.warmup = true;
    } else if (arg == "--print-batches") {
      options.print_batches = true;
    } else if (arg.rfind("--", 0) == 0) {
      return "unknown option " + arg + (has_value ? "" : " (or it lacks its value)");
    } else {
      options.positional.push_back(arg);
    }
  }
  if (options.positional.size() != (options.check_only ? 1u : 3u)) return "wrong number of arguments";
  return std::nullopt;
}

// Host clock read after the device has finished its queued work (a launch returns before the GPU is done).
// torch::cuda::synchronize exists in CPU and CUDA libtorch alike; it is only called for a CUDA device.
double clock_after(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Pass {
  at::Tensor dna, esm, probabilities;
  virnucpro::BatchStats dna_stats, esm_stats;
  std::vector<std::vector<int64_t>> dna_batches, esm_batches;
  double dna_s = 0, esm_s = 0, classifier_s = 0;
};

// Both encoders over every frame, then the classifier, each stage between synchronised clock reads.
Pass run_pass(virnucpro::EngineSet& engines, const std::vector<c10::IValue>& items, int64_t budget,
              const std::optional<virnucpro::PaddingCap>& cap) {
  const auto& device = engines.device();
  Pass pass;
  double start = clock_after(device);
  pass.dna = virnucpro::embed_in_token_batches(engines.dnabert(), items[0].toTensor(), items[1].toTensor(), budget,
                                               &pass.dna_stats, &pass.dna_batches, cap);
  double end = clock_after(device);
  pass.dna_s = end - start;
  start = end;
  pass.esm = virnucpro::embed_in_token_batches(engines.esm(), items[2].toTensor(), items[3].toTensor(), budget,
                                               &pass.esm_stats, &pass.esm_batches, cap);
  end = clock_after(device);
  pass.esm_s = end - start;
  start = end;
  pass.probabilities = engines.classifier().probabilities(torch::cat({pass.dna, pass.esm}, 1));
  pass.classifier_s = clock_after(device) - start;
  return pass;
}

nlohmann::json stats_json(const virnucpro::BatchStats& stats, double seconds) {
  return {{"seconds", seconds},
          {"batches", stats.batches},
          {"items", stats.items},
          {"tokens", stats.tokens},
          {"computed_tokens", stats.computed_tokens},
          {"embed_s", stats.embed_s},
          {"host_work_s", {{"select", stats.select_s}, {"check", stats.check_s}, {"place", stats.place_s}}}};
}

void print_batches(const std::string& kind, const std::vector<std::vector<int64_t>>& batches) {
  for (const auto& batch : batches) {
    std::cout << "batch " << kind;
    for (const auto index : batch) std::cout << " " << index;
    std::cout << "\n";
  }
}

int check(const Options& options, const c10::Device& device) {
  const auto manifest = virnucpro::EngineManifest::read(options.positional[0]);
  const auto problems = manifest.mismatches(device, options.verify);
  if (!problems.empty()) {
    return error_line("engines in " + options.positional[0] + " cannot be used here: " + problems, 2);
  }
  // the manifest's own strings, shown printable: a newline or escape in them must not forge a second line
  std::cout << "ok: " << virnucpro::printable(manifest.backend) << " " << virnucpro::printable(manifest.precision)
            << " engines for " << virnucpro::printable(manifest.device_arch) << "\n";
  return 0;
}

// The most INPUTS.pt may hold: token ids and masks of ~100 million frames (far more than one call needs).
constexpr std::uintmax_t kMaxInputBytes = std::uintmax_t{64} << 30;

// INPUTS.pt's bytes: a regular file (a FIFO would block, /dev/zero never end) of a bounded size.
std::optional<std::vector<char>> read_inputs(const std::string& name, std::string& problem) {
  std::error_code error;
  const auto status = std::filesystem::status(name, error);
  if (error || !std::filesystem::is_regular_file(status)) {
    problem = "cannot read " + name + " (not a regular file)";
    return std::nullopt;
  }
  const auto size = std::filesystem::file_size(name, error);
  if (error || size > kMaxInputBytes) {
    problem = name + " is larger than an input file can be (" + std::to_string(kMaxInputBytes) + " bytes)";
    return std::nullopt;
  }
  std::ifstream in(name, std::ios::binary);
  std::vector<char> bytes(static_cast<size_t>(size));
  if (!in || !in.read(bytes.data(), static_cast<std::streamsize>(size))) {
    problem = "cannot read " + name;
    return std::nullopt;
  }
  return bytes;
}

// Ids are token ids (>= 0) and masks 0 or 1, as the Python runtime writes them; anything else would reach
// the engine's kernels, whose bounds checks abort the process rather than throw. The four tensors also hold
// values (a "meta" storage location gives none: min() threw, exit 1), one row per frame each (rows that
// differ ran both encoders, then torch::cat threw, exit 1), and every frame a token (an all-zero mask row
// gave NaN embeddings, exit 1 "try --precision fp32"; no columns at all, amax()'s error).
std::optional<std::string> check_inputs(const std::vector<c10::IValue>& items, const std::string& name) {
  static const char* kNames[] = {"dna_ids", "dna_mask", "protein_ids", "protein_mask"};
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& tensor = items[i].toTensor();
    if (tensor.scalar_type() != at::kLong || tensor.dim() != 2 || tensor.is_sparse()) {
      return name + ": " + kNames[i] + " must be a 2-D int64 tensor";
    }
    if (!tensor.is_cpu() && !tensor.is_cuda()) {
      return name + ": " + kNames[i] + " holds no values (a tensor of the " + tensor.device().str() + " device)";
    }
    const int64_t rows = items[0].toTensor().size(0);
    if (tensor.size(0) != rows) {
      return name + ": " + kNames[i] + " has " + std::to_string(tensor.size(0)) + " rows and dna_ids " +
             std::to_string(rows) + "; each holds one row per frame";
    }
    const bool mask = i % 2 == 1;
    const std::string no_token = name + ": " + kNames[i] + " has a row without a token (a frame has at least one)";
    if (tensor.numel() == 0) {
      if (mask && rows > 0) return no_token;
      continue;
    }
    const auto low = tensor.min().item<int64_t>(), high = tensor.max().item<int64_t>();
    if (low < 0 || (mask && high > 1)) {
      return name + ": " + kNames[i] + (mask ? " must hold only 0 and 1" : " holds a negative token id");
    }
    if (mask && tensor.amax(1).min().item<int64_t>() == 0) return no_token;
  }
  // Each encoder's ids and mask of one shape (checked here, naming the file, before the engines load: the
  // encoder's own check came after DNABERT-S had embedded every frame).
  for (size_t i = 0; i + 1 < items.size(); i += 2) {
    const auto ids = items[i].toTensor().size(1), mask = items[i + 1].toTensor().size(1);
    if (ids != mask) {
      return name + ": " + kNames[i] + " has " + std::to_string(ids) + " columns and " + kNames[i + 1] + " " +
             std::to_string(mask) + "; each mask row covers its ids row";
    }
  }
  // Rows the encoders can pool, as the Python runtime writes them: each mask row a run of ones then zeros
  // (right-padded; batching takes a row's token count as its length), and each ESM-2 row <cls>, at least
  // one residue and <eos>, since ESM-2 pools positions 1..len-2 (DNABERT-S pools every real token, so one
  // suffices, checked above). [1,0,0,0,0,1] or a 2-token protein row gave NaN embeddings after DNABERT-S
  // had run (exit 1, "try --precision fp32").
  const auto first_row = [](const at::Tensor& flags) { return flags.nonzero()[0][0].item<int64_t>(); };
  for (size_t i = 1; i < items.size(); i += 2) {
    const auto& mask = items[i].toTensor();
    if (mask.size(0) == 0 || mask.size(1) < 2) continue;
    const auto rises = (mask.slice(1, 1) > mask.slice(1, 0, -1)).any(1);
    if (rises.any().item<bool>()) {
      return name + ": " + kNames[i] + " row " + std::to_string(first_row(rises)) +
             " is not a run of ones followed by zeros (rows must be right-padded)";
    }
  }
  constexpr int64_t kMinProteinTokens = 3;
  if (const auto& protein = items[3].toTensor(); protein.size(0) > 0) {
    const auto lengths = protein.sum(1);
    const auto short_rows = lengths < kMinProteinTokens;
    if (short_rows.any().item<bool>()) {
      const auto row = first_row(short_rows);
      return name + ": protein_mask row " + std::to_string(row) + " has " +
             std::to_string(lengths[row].item<int64_t>()) + " tokens; ESM-2 pools the residues between <cls> and " +
             "<eos>, so a row needs at least " + std::to_string(kMinProteinTokens);
    }
  }
  return std::nullopt;
}

// Where write_whole may write `name`, checked before any work (as write_whole checks it): a name, not a
// link, nothing but a regular file there, in an existing folder, one that takes a new file (`probe`: a file
// is made and removed there; write_whole's own temporary file is that test when it writes). An empty name
// said "cannot write : Success" (exit 1), and a folder or link named by --timing was refused only after
// OUTPUTS.pt was written.
std::optional<std::string> writable_path(const std::string& name, const std::string& what, bool probe = true) {
  if (name.empty()) return what + " is an empty path; name the file to write";
  std::error_code error;
  const std::filesystem::path target(name);
  const auto status = std::filesystem::symlink_status(target, error);
  if (std::filesystem::is_symlink(status)) {
    return "cannot write " + name + ": it is a symbolic link (refused: it could point anywhere)";
  }
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    return "cannot write " + name + ": it is not a regular file (a folder, device or FIFO is never replaced)";
  }
  if (!target.has_filename()) return "cannot write " + name + ": it names a folder, not a file";
  const auto parent = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(parent, error)) {
    return "cannot write " + name + ": " + parent.string() + " is not a folder";
  }
  if (!probe) return std::nullopt;
  // a folder that takes no new file (read-only, another user's, /proc) failed only after the work
  const auto made = parent / ("." + target.filename().string() + "." + std::to_string(::getpid()) + ".probe");
  const int fd = ::open(made.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot write " + name + ": " + std::strerror(errno);
  ::close(fd);
  ::unlink(made.c_str());
  return std::nullopt;
}

// Writes OUTPUTS.pt (or the timing file) whole or not at all: a new temporary file beside it (never
// through a link), its write checked, then renamed over the name. Only a regular file is replaced: a
// link, folder, device or FIFO at the name is refused.
std::optional<std::string> write_whole(const std::string& name, const std::string& data) {
  // checked again (it may have changed), without the probe: the temporary file below is that test
  if (auto refused = writable_path(name, "the output", false)) return refused;
  std::error_code error;
  const std::filesystem::path target(name);
  const auto parent = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  const auto temporary = parent / ("." + target.filename().string() + "." + std::to_string(::getpid()) + ".partial");
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd < 0) return "cannot write " + name + ": " + std::strerror(errno);
  size_t written = 0;
  while (written < data.size()) {
    const auto n = ::write(fd, data.data() + written, data.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool ok = written == data.size() && ::fsync(fd) == 0;
  const int saved = errno;
  if (::close(fd) != 0 || !ok) {
    std::filesystem::remove(temporary, error);
    return "cannot write " + name + ": " + std::strerror(ok ? errno : saved);
  }
  std::filesystem::rename(temporary, target, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    return "cannot write " + name + ": " + error.message();
  }
  return std::nullopt;
}

// Bad input data: one line on stderr, exit 2 (no usage text: the command line was right).
int refuse(const std::string& message) { return error_line(message, 2); }

// Token ids each encoder can embed: below its package's vocabulary size (Encoder::refusal), checked on the
// whole input once the engines are loaded and before either runs.
std::optional<std::string> check_vocabularies(virnucpro::EngineSet& engines, const std::vector<c10::IValue>& items,
                                              const std::string& name) {
  if (auto why = engines.dnabert().refusal(items[0].toTensor(), items[1].toTensor()); !why.empty()) {
    return name + ": dna_ids: " + why;
  }
  if (auto why = engines.esm().refusal(items[2].toTensor(), items[3].toTensor()); !why.empty()) {
    return name + ": protein_ids: " + why;
  }
  return std::nullopt;
}

int run(const Options& options, const c10::Device& device) {
  if (auto bad = writable_path(options.positional[2], "OUTPUTS.pt")) return refuse(*bad);
  if (!options.timing.empty()) {
    if (auto bad = writable_path(options.timing, "--timing")) return refuse(*bad);
    // one file for both: the timing was written over the outputs, exit 0
    std::error_code a_error, b_error, same_error;
    const auto a = std::filesystem::weakly_canonical(options.positional[2], a_error);
    const auto b = std::filesystem::weakly_canonical(options.timing, b_error);
    const bool same = (!a_error && !b_error) ? a == b : options.positional[2] == options.timing;
    if (same || std::filesystem::equivalent(options.positional[2], options.timing, same_error)) {
      return refuse("--timing " + options.timing + " names OUTPUTS.pt itself; give it a file of its own");
    }
  }
  std::string problem;
  const auto& name = options.positional[1];
  const auto bytes = read_inputs(name, problem);
  if (!bytes) return refuse(problem);  // the command line was right: one line, no usage text
  const auto loaded = virnucpro::load_tensor_archive(*bytes, name);  // std::invalid_argument: exit 2
  const auto* tuple = loaded.isTuple() ? &loaded.toTupleRef() : nullptr;
  if (!tuple || tuple->elements().size() != 4) {
    return refuse(name + " must hold (dna_ids, dna_mask, protein_ids, protein_mask)");
  }
  const std::vector<c10::IValue> items(tuple->elements().begin(), tuple->elements().end());
  for (const auto& item : items) {
    if (!item.isTensor()) return refuse(name + " must hold four tensors");
  }
  if (const auto bad = check_inputs(items, name)) return refuse(*bad);
  if (options.cpu_threads > 0) at::set_num_threads(static_cast<int>(options.cpu_threads));
  double start = clock_after(device);
  virnucpro::EngineSet engines(options.positional[0], device, options.verify);
  const double load_s = clock_after(device) - start;
  if (const auto bad = check_vocabularies(engines, items, name)) return refuse(*bad);
  const int64_t budget = options.max_batch_tokens > 0            ? options.max_batch_tokens
                         : engines.manifest().max_batch_tokens > 0 ? engines.manifest().max_batch_tokens
                                                                   : virnucpro::kFallbackBatchTokens;
  double warmup_s = 0;
  if (options.warmup) {
    start = clock_after(device);
    run_pass(engines, items, budget, options.padding_cap);
    warmup_s = clock_after(device) - start;
  }
  const auto pass = run_pass(engines, items, budget, options.padding_cap);
  if (options.print_batches) {
    print_batches("dnabert-s", pass.dna_batches);
    print_batches("esm2", pass.esm_batches);
  }
  const auto out = torch::pickle_save(c10::ivalue::Tuple::create({pass.dna, pass.esm, pass.probabilities}));
  if (const auto failed = write_whole(options.positional[2], std::string(out.begin(), out.end()))) {
    return error_line(*failed, 1);  // checked up front (writable_path): this is a failure of the write
  }
  if (!options.timing.empty()) {
    const auto& manifest = engines.manifest();
    const nlohmann::json timing = {
        {"tool", "virnucpro-host"},
        {"device", device.str()},
        {"torch", TORCH_VERSION},
        {"engines", {{"backend", manifest.backend}, {"precision", manifest.precision}, {"arch", manifest.device_arch}}},
        {"frames", pass.dna.size(0)},
        {"max_batch_tokens", budget},
        {"max_padding", options.padding_cap ? nlohmann::json{{"max_share", options.padding_cap->max_share},
                                                             {"floor_tokens", options.padding_cap->floor_tokens}}
                                            : nlohmann::json(nullptr)},
        {"cpu_threads", at::get_num_threads()},
        {"warmup", options.warmup},
        {"load_s", load_s},
        {"warmup_s", warmup_s},
        {"dnabert-s", stats_json(pass.dna_stats, pass.dna_s)},
        {"esm2", stats_json(pass.esm_stats, pass.esm_s)},
        {"classifier", {{"seconds", pass.classifier_s}}},
        {"seconds", pass.dna_s + pass.esm_s + pass.classifier_s},
        {"rule", "seconds between device-synchronised clock reads; inputs' host-to-device and results' "
                 "device-to-host copies included; engine loading and the warm-up pass excluded"},
    };
    if (const auto failed = write_whole(options.timing, timing.dump(2) + "\n")) return error_line(*failed, 1);
  }
  std::cout << "embedded " << pass.dna.size(0) << " frames\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {  // asked for: the usage on stdout, exit 0
      std::cout << USAGE;
      return 0;
    }
  }
  Options options;
  if (const auto problem = parse(argc, argv, options)) return usage(*problem);
  try {
    std::optional<c10::Device> parsed;
    try {
      parsed.emplace(options.device);
    } catch (const std::exception&) {
    }
    // Only the CPU and CUDA: on "meta", which the manifest check took for the CPU, the CPU engines ran
    // over tensors without data (SIGSEGV); "mps" and the like failed later, exit 1.
    if (!parsed || !(parsed->is_cpu() || parsed->is_cuda())) {
      return usage("--device " + options.device + ": expected cpu, cuda or cuda:N");
    }
    // "cuda" means the first GPU, so every CUDA call below names the same device.
    const c10::Device device = parsed->is_cuda() && !parsed->has_index() ? c10::Device(c10::kCUDA, 0) : *parsed;
    return options.check_only ? check(options, device) : run(options, device);
  } catch (const virnucpro::EngineMismatch& error) {
    return error_line(error.what(), 2);
  } catch (const std::invalid_argument& error) {
    return error_line(error.what(), 2);
  } catch (const std::exception& error) {
    return error_line(virnucpro::first_line(error.what()), 1);
  }
}
