// Text for the host's one-line messages: every refusal and failure is one line on stderr.
#pragma once

#include <string>

namespace virnucpro {

// The first line of a library's message (libtorch's carry backtraces and compiler output below it).
inline std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Text taken from a hostile file: cut to 60 characters, control characters shown as '?', so that a
// name or value from the file can neither run on for pages nor break the message's one line.
inline std::string printable(const std::string& text) {
  constexpr size_t kShown = 60;
  std::string out = text.substr(0, kShown);
  for (auto& c : out) {
    if ((c >= 0 && c < 0x20) || c == 0x7f) c = '?';
  }
  return out + (text.size() > kShown ? "..." : "");
}

}  // namespace virnucpro
