// virnucpro-host: run an engine directory from C++ on token ids saved by Python.
//
//   virnucpro-host ENGINE_DIR --check [--device D]
//   virnucpro-host ENGINE_DIR INPUTS.pt OUTPUTS.pt [--device cpu|cuda|cuda:N] [--no-verify]
//
// INPUTS.pt: torch.save((dna_ids, dna_mask, protein_ids, protein_mask)), int64 [N, T] each, one row per
// kept frame. OUTPUTS.pt: (dnabert_embeddings [N, 768], esm_embeddings [N, 2560], probabilities [N, 2]),
// readable with torch.load. Exit codes as the Python CLI: 0 ok, 2 bad usage/input or engines that do not
// fit this host (one line on stderr), 1 any other failure.
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/serialize.h>
#include <torch/torch.h>

#include "virnucpro/runtime.h"

namespace {

int usage(const std::string& message) {
  std::cerr << "Error: " << message << "\nUsage: virnucpro-host ENGINE_DIR (--check | INPUTS.pt OUTPUTS.pt) "
            << "[--device cpu|cuda|cuda:N] [--no-verify]\n";
  return 2;
}

at::Tensor embed_in_batches(virnucpro::Encoder& encoder, const at::Tensor& ids, const at::Tensor& mask,
                            int64_t max_batch) {
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < ids.size(0); start += max_batch) {
    const int64_t end = std::min(start + max_batch, ids.size(0));
    parts.push_back(encoder.embed(ids.slice(0, start, end), mask.slice(0, start, end)));
  }
  return torch::cat(parts, 0);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string device_spec = "cpu";
  bool check_only = false, verify = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--device" && i + 1 < argc) {
      device_spec = argv[++i];
    } else if (arg == "--check") {
      check_only = true;
    } else if (arg == "--no-verify") {
      verify = false;
    } else if (arg.rfind("--", 0) == 0) {
      return usage("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != (check_only ? 1u : 3u)) return usage("wrong number of arguments");
  try {
    const c10::Device device(device_spec);
    if (check_only) {
      const auto manifest = virnucpro::EngineManifest::read(positional[0]);
      const auto problems = manifest.mismatches(device, verify);
      if (!problems.empty()) {
        std::cerr << "Error: engines in " << positional[0] << " cannot be used here: " << problems << "\n";
        return 2;
      }
      std::cout << "ok: " << manifest.backend << " " << manifest.precision << " engines for "
                << manifest.device_arch << "\n";
      return 0;
    }
    std::ifstream in(positional[1], std::ios::binary);
    if (!in) return usage("cannot read " + positional[1]);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto loaded = torch::pickle_load(bytes);
    if (!loaded.isTuple() || loaded.toTupleRef().elements().size() != 4) {
      return usage(positional[1] + " must hold (dna_ids, dna_mask, protein_ids, protein_mask)");
    }
    const auto& items = loaded.toTupleRef().elements();
    virnucpro::EngineSet engines(positional[0], device, verify);
    const auto& shapes = engines.manifest().models;
    const auto dna = embed_in_batches(engines.dnabert(), items[0].toTensor(), items[1].toTensor(),
                                      shapes.at("dnabert-s").shapes.max_batch);
    const auto esm = embed_in_batches(engines.esm(), items[2].toTensor(), items[3].toTensor(),
                                      shapes.at("esm2").shapes.max_batch);
    const auto probs = engines.classifier().probabilities(torch::cat({dna, esm}, 1));
    const auto out = torch::pickle_save(c10::ivalue::Tuple::create({dna, esm, probs}));
    std::ofstream(positional[2], std::ios::binary).write(out.data(), static_cast<std::streamsize>(out.size()));
    std::cout << "embedded " << dna.size(0) << " frames\n";
    return 0;
  } catch (const virnucpro::EngineMismatch& error) {
    std::cerr << "Error: " << error.what() << "\n";
    return 2;
  } catch (const std::invalid_argument& error) {
    std::cerr << "Error: " << error.what() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::string text = error.what();
    std::cerr << "Error: " << text.substr(0, text.find('\n')) << "\n";
    return 1;
  }
}
