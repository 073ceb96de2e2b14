// JSON from a hostile file (manifest.json, a safetensors header), parsed with bounded nesting.
//
// nlohmann parses and destroys deep input without recursion, but copying a value recurses once per
// level (json::value(key, default) returns a copy): a manifest whose `libraries` or `build` was ~10^6
// nested arrays (2 MB) crashed the host with SIGSEGV, as did a classifier header nesting a tensor's
// dtype 400,000 deep. No file the host reads nests past a few levels; the safetensors library refuses
// headers past 128 (serde_json's recursion limit), and so does this, for both files.
#pragma once

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace virnucpro {

constexpr int kMaxJsonDepth = 128;

// Thrown by parse_bounded for input that nests deeper than kMaxJsonDepth, begins with a UTF-8 byte-order
// mark (which nlohmann skips and Python's json and the safetensors library refuse) or holds a NUL byte
// (nlohmann ends its input there: a manifest or header `{...}\0anything` was read as `{...}`, the rest
// unseen; Python's json and the safetensors library refuse it, and no JSON holds one).
class JsonRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// `text` with Python json's non-standard constants NaN, Infinity and -Infinity (outside strings) read as
// null. The Python tool writes them where a number is not finite (a parity gate kept by `build
// --keep-failing` records max_abs Infinity and min_cosine NaN), and its reader takes them; nlohmann refuses
// them, so the host refused such a whole manifest as "not valid JSON" while predict ran it. As null, a
// field the host reads as a number is still refused (integer(): "not null").
inline std::string python_constants_as_null(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char* constant : {"NaN", "Infinity", "-Infinity"}) {
      const std::string word(constant);
      if (text.compare(i, word.size(), word) == 0) {
        out += "null";
        i += word.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

// `text` parsed; nlohmann::json::exception for text that is not JSON, JsonRefused as above.
inline nlohmann::json parse_bounded(const std::string& text) {
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) throw JsonRefused("it begins with a UTF-8 byte-order mark");
  if (text.find('\0') != std::string::npos) throw JsonRefused("it holds a NUL byte");
  return nlohmann::json::parse(text, [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth >= kMaxJsonDepth) {
      throw JsonRefused("it nests values deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
    return true;
  });
}

}  // namespace virnucpro
