// Token-budget batching: the Python runtime's rule (virnucpro_trt/runtime/batching.py and
// runtime/embedding.py), so the C++ host runs exactly the batches `predict` runs and gives the same numbers.
//
// The rule, and why: padding is paid for in FLOPs, so items are sorted by length (longest first, ties in
// input order) and a batch takes count = max(1, max_batch_tokens / longest) items, where `longest` is the
// token count of its first (longest) item -- the budget is counted on the batcher's padded size, not on
// the engine's rounding to its sequence multiple, because that is what the Python batcher counts. The
// count is capped by the engine's max batch (the manifest's shape range). With a padding cap
// (`predict --max-padding SHARE[:FLOOR]`) the batch then keeps only the longest prefix of those items in
// which every prefix of k items has padded_k <= SHARE * computed_k or computed_k <= FLOOR (computed_k =
// k * longest, padded_k = computed_k - their lengths; at least one item): on mixed lengths, fewer padded
// tokens, at the cost of more, smaller batches. Results go back in input order.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace virnucpro {

class Encoder;

// The Python runtime's budget when an engine manifest records none (settings.DEFAULT_CPU_BATCH_TOKENS,
// the fallback of engines/engine_set.py); a manifest written by `virnucpro-trt build` always records one.
constexpr int64_t kFallbackBatchTokens = 4096;

// The Python runtime's PaddingCap (settings.py, applied in runtime/batching.py): a batch closes before an
// item that would make its padding more than max_share of its computed tokens, once it computes more than
// floor_tokens. The comparison is made in double on int64 token counts, as numpy makes it, so both
// runtimes cut at the same item.
struct PaddingCap {
  double max_share = 0;
  int64_t floor_tokens = 0;

  // Throws std::invalid_argument (one line) unless max_share is in [0, 1) and floor_tokens >= 0.
  void validate() const;
  // How many of the `count` lengths at `lengths` (descending, the first the longest) one batch keeps.
  int64_t kept(const int64_t* lengths, int64_t count) const;
  // "SHARE" or "SHARE:FLOOR" (e.g. "0.05:8192"; "SHARE:" is floor 0, as in Python), a decimal share and
  // a non-negative integer floor and nothing else; throws std::invalid_argument (one line) otherwise.
  static PaddingCap parse(const std::string& text);
};

// Indices of each batch, longest items first; an item longer than the budget gets a batch of its own.
// max_batch_size <= 0: no cap. `cap`: the padding cap (none: batches fill the budget). Throws
// std::invalid_argument when max_batch_tokens < 1 or the cap is invalid.
std::vector<std::vector<int64_t>> token_budget_batches(const std::vector<int64_t>& lengths,
                                                       int64_t max_batch_tokens, int64_t max_batch_size = 0,
                                                       const std::optional<PaddingCap>& cap = std::nullopt);

// Token count of each row of a right-padded attention mask [N, T]: its last nonzero position + 1
// (what len(token_ids) was before Python padded the rows).
std::vector<int64_t> row_lengths(const at::Tensor& attention_mask);

// What the batches of one encoder computed (the Python runtime's BatchStats): real tokens against the
// tokens of the shapes the engine ran (padded to the batch's longest item, then to the graph's box).
// embed_s: seconds inside Encoder::embed (the box padding, the copies both ways and the engine run; it
// returns embeddings on the CPU, so the device has finished), the rest of a stage being the batching's
// own host work, timed by part: select_s (the batch's rows and columns out of the inputs), check_s (the
// finiteness check) and place_s (the output rows put in place, the token counts).
struct BatchStats {
  int64_t batches = 0, items = 0, tokens = 0, computed_tokens = 0;
  double embed_s = 0, select_s = 0, check_s = 0, place_s = 0;
};

// Embeddings float32 [N, dim] on the CPU, in input order, of right-padded int64 ids/mask [N, T], run in
// token-budget batches; a batch that runs out of device memory is run as two halves (recursively), and
// OutOfMemory escapes only for a single item. Throws std::invalid_argument (one line) for an item longer
// than the engine accepts and std::runtime_error for NaN/Inf embeddings, as the Python runtime refuses
// both. `batches` (optional) receives the batches that ran, in order (the halves of a split batch).
// `cap`: the batcher's padding cap (token_budget_batches), checked before anything runs.
at::Tensor embed_in_token_batches(Encoder& encoder, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  int64_t max_batch_tokens, BatchStats* stats = nullptr,
                                  std::vector<std::vector<int64_t>>* batches = nullptr,
                                  const std::optional<PaddingCap>& cap = std::nullopt);

}  // namespace virnucpro
