// Token-budget batching (see batching.h for the rule) and the loop that feeds an encoder its batches.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

#include "virnucpro/batching.h"
#include "virnucpro/runtime.h"

namespace virnucpro {
namespace {

// What the host does with a batch's embeddings once the device has computed them -- check that every
// value is finite, put the rows in their places -- runs on this thread. Encoder::embed returns the batch
// as a contiguous float32 CPU tensor [rows, dim] of a few hundred thousand values, past libtorch's grain
// size, so torch::isfinite(...).all() and index_copy_ would go through its intra-op thread pool, whose
// threads fall asleep while the device computes each batch and must be woken for every one: on one
// 16-thread GPU host that wake-up was the host's largest own cost (its --timing). One pass here takes well
// under a millisecond.

// The exponent bits, not std::isfinite: a host built with -ffast-math (-ffinite-math-only) may fold
// std::isfinite to true and let NaN embeddings through.
bool all_finite(const at::Tensor& values) {
  static_assert(sizeof(float) == sizeof(uint32_t), "IEEE-754 binary32 floats");
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: Inf or NaN
  const float* data = values.data_ptr<float>();
  bool finite = true;
  for (int64_t i = 0, n = values.numel(); i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof bits);
    finite &= (bits & kExponent) != kExponent;
  }
  return finite;
}

// out[batch[k]] = pooled[k] for every k (both contiguous float32, rows of the same width).
void place_rows(at::Tensor& out, const std::vector<int64_t>& batch, const at::Tensor& pooled) {
  const int64_t width = out.size(1);
  float* target = out.data_ptr<float>();
  const float* source = pooled.data_ptr<float>();
  for (size_t k = 0; k < batch.size(); ++k) {
    std::memcpy(target + batch[k] * width, source + static_cast<int64_t>(k) * width, sizeof(float) * width);
  }
}

void embed_batch(Encoder& encoder, const at::Tensor& ids, const at::Tensor& mask, const std::vector<int64_t>& lengths,
                 const std::vector<int64_t>& batch, at::Tensor& out, BatchStats* stats,
                 std::vector<std::vector<int64_t>>* batches_run) {
  auto started = std::chrono::steady_clock::now();
  const auto lap = [&started](double& total) {  // seconds since the last lap, added to `total`
    const auto now = std::chrono::steady_clock::now();
    total += std::chrono::duration<double>(now - started).count();
    started = now;
  };
  BatchStats unused;
  BatchStats& timed = stats ? *stats : unused;
  const auto rows = torch::tensor(batch, torch::kInt64);
  const int64_t length = lengths[batch.front()];  // the longest item of the batch comes first
  const auto batch_mask = mask.index_select(0, rows).slice(1, 0, length);
  const auto batch_ids = ids.index_select(0, rows).slice(1, 0, length);
  lap(timed.select_s);
  at::Tensor pooled;
  try {
    pooled = encoder.embed(batch_ids, batch_mask);
    lap(timed.embed_s);
  } catch (const OutOfMemory& error) {
    if (batch.size() == 1) throw;
    const auto half = static_cast<std::ptrdiff_t>(batch.size() / 2);
    std::cerr << "warning: " << error.what() << "; retrying as " << half << " + " << batch.size() - half
              << " items\n";
  }
  if (!pooled.defined()) {  // split outside the handler, so the failed attempt's memory can be released
    const std::vector<int64_t> first(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(batch.size() / 2));
    const std::vector<int64_t> second(batch.begin() + static_cast<std::ptrdiff_t>(batch.size() / 2), batch.end());
    embed_batch(encoder, ids, mask, lengths, first, out, stats, batches_run);
    embed_batch(encoder, ids, mask, lengths, second, out, stats, batches_run);
    return;
  }
  if (!pooled.device().is_cpu() || pooled.scalar_type() != torch::kFloat32 || !pooled.is_contiguous() ||
      pooled.dim() != 2 || pooled.size(0) != static_cast<int64_t>(batch.size()) || pooled.size(1) != out.size(1)) {
    throw std::logic_error(encoder.kind() + ": embeddings not in Encoder::embed's layout");  // a bug, not input
  }
  const bool finite = all_finite(pooled);
  lap(timed.check_s);
  if (!finite) {
    throw std::runtime_error(encoder.kind() + " produced NaN/Inf embeddings in a batch of " +
                             std::to_string(batch.size()) + " items (e.g. #" + std::to_string(batch.front()) +
                             "); try --precision fp32");
  }
  place_rows(out, batch, pooled);
  if (stats) {
    const auto [graph_rows, graph_length] = encoder.computed_shape(static_cast<int64_t>(batch.size()), length);
    stats->batches += 1;
    stats->items += static_cast<int64_t>(batch.size());
    stats->tokens += batch_mask.sum().item<int64_t>();
    stats->computed_tokens += graph_rows * graph_length;
  }
  lap(timed.place_s);
  if (batches_run) batches_run->push_back(batch);
}

// `text` is all of `allowed` characters (and not empty).
bool only(const std::string& text, const std::string& allowed) {
  return !text.empty() && text.find_first_not_of(allowed) == std::string::npos;
}

}  // namespace

void PaddingCap::validate() const {
  if (!(0 <= max_share && max_share < 1)) {  // NaN fails too
    std::ostringstream message;
    message << "a padding cap's share must be in [0, 1), got " << max_share;
    throw std::invalid_argument(message.str());
  }
  if (floor_tokens < 0) {
    throw std::invalid_argument("a padding cap's floor must be >= 0 tokens, got " + std::to_string(floor_tokens));
  }
}

int64_t PaddingCap::kept(const int64_t* lengths, int64_t count) const {
  // batching.py's capped_count: len(ok) if ok.all() else max(1, argmin(ok)), ok per prefix of k items.
  // numpy compares int64 padded with the float64 max_share * computed as float64, hence the casts.
  const int64_t longest = lengths[0];
  int64_t real = 0;
  for (int64_t k = 1; k <= count; ++k) {
    real += lengths[k - 1];
    const int64_t computed = k * longest;
    const int64_t padded = computed - real;
    const bool ok = static_cast<double>(padded) <= max_share * static_cast<double>(computed) ||
                    computed <= floor_tokens;
    if (!ok) return std::max<int64_t>(1, k - 1);
  }
  return count;
}

PaddingCap PaddingCap::parse(const std::string& text) {
  const auto colon = text.find(':');
  const std::string share = text.substr(0, colon);
  const std::string floor = colon == std::string::npos ? "" : text.substr(colon + 1);
  PaddingCap cap;
  // strtod, after the character check: decimal or exponent notation only (no hex, inf, nan, spaces,
  // nor an empty share); settings.PaddingCap.parse takes the same texts.
  char* end = nullptr;
  if (!share.empty() && only(share, "0123456789.eE+-")) cap.max_share = std::strtod(share.c_str(), &end);
  if (end == nullptr || *end != '\0') {
    throw std::invalid_argument("padding cap '" + text + "': the share '" + share + "' is not a number");
  }
  if (!floor.empty()) {
    const bool negative = floor[0] == '-';
    if (!only(negative ? floor.substr(1) : floor, "0123456789")) {
      throw std::invalid_argument("padding cap '" + text + "': the floor '" + floor + "' is not an integer");
    }
    try {
      cap.floor_tokens = std::stoll(floor);
    } catch (const std::out_of_range&) {
      throw std::invalid_argument("padding cap '" + text + "': the floor '" + floor + "' is out of range");
    }
  }
  try {
    cap.validate();
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument("padding cap '" + text + "': " + error.what());
  }
  return cap;
}

std::vector<std::vector<int64_t>> token_budget_batches(const std::vector<int64_t>& lengths,
                                                       int64_t max_batch_tokens, int64_t max_batch_size,
                                                       const std::optional<PaddingCap>& cap) {
  if (max_batch_tokens < 1) throw std::invalid_argument("max_batch_tokens must be positive");
  if (cap) cap->validate();
  // numpy's argsort(-lengths, kind="stable"): descending length, equal lengths in input order.
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<int64_t>> batches;
  const auto n = static_cast<int64_t>(order.size());
  for (int64_t start = 0; start < n;) {
    const int64_t longest = lengths[order[start]];
    int64_t count = std::max<int64_t>(1, max_batch_tokens / std::max<int64_t>(longest, 1));
    if (max_batch_size > 0) count = std::min(count, max_batch_size);
    int64_t end = std::min(start + count, n);
    if (cap) {
      std::vector<int64_t> batch_lengths(static_cast<size_t>(end - start));
      for (int64_t i = start; i < end; ++i) batch_lengths[static_cast<size_t>(i - start)] = lengths[order[i]];
      end = start + cap->kept(batch_lengths.data(), end - start);
    }
    batches.emplace_back(order.begin() + start, order.begin() + end);
    start = end;
  }
  return batches;
}

std::vector<int64_t> row_lengths(const at::Tensor& attention_mask) {
  if (attention_mask.dim() != 2) throw std::invalid_argument("an attention mask must be [N, T]");
  const auto mask = attention_mask.to(torch::kCPU, torch::kInt64).ne(0);
  // Position of the last nonzero entry + 1 (0 for an all-zero row): (j + 1) where set, max over j.
  const auto positions = torch::arange(1, mask.size(1) + 1, torch::kInt64).unsqueeze(0);
  const auto last = (positions * mask).amax(1).contiguous();
  const auto* data = last.data_ptr<int64_t>();
  return {data, data + last.size(0)};
}

at::Tensor embed_in_token_batches(Encoder& encoder, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  int64_t max_batch_tokens, BatchStats* stats,
                                  std::vector<std::vector<int64_t>>* batches_run,
                                  const std::optional<PaddingCap>& cap) {
  if (cap) cap->validate();
  if (input_ids.dim() != 2 || input_ids.sizes() != attention_mask.sizes()) {
    throw std::invalid_argument(encoder.kind() + ": token ids and mask must be matching [N, T] tensors");
  }
  const int64_t items = input_ids.size(0);
  auto out = torch::empty({items, encoder.dim()}, torch::kFloat32);
  if (items == 0) return out;
  const auto lengths = row_lengths(attention_mask);
  const auto longest = std::max_element(lengths.begin(), lengths.end());
  if (*longest > encoder.max_length()) {  // checked up front, as the Python runtime does
    throw std::invalid_argument("#" + std::to_string(longest - lengths.begin()) + " has " +
                                std::to_string(*longest) + " tokens but the " + encoder.kind() +
                                " engine accepts at most " + std::to_string(encoder.max_length()) +
                                "; rebuild the engines with a larger --max-length");
  }
  const auto ids = input_ids.to(torch::kCPU, torch::kInt64);
  const auto mask = attention_mask.to(torch::kCPU, torch::kInt64);
  if (batches_run) batches_run->clear();
  for (const auto& batch : token_budget_batches(lengths, max_batch_tokens, encoder.max_batch(), cap)) {
    embed_batch(encoder, ids, mask, lengths, batch, out, stats, batches_run);
  }
  return out;
}

}  // namespace virnucpro
