// Text for the host's one-line messages: every refusal and failure is one line on stderr.
#pragma once

#include <string>

namespace virnucpro {

// The first line of a library's message (libtorch's carry backtraces and compiler output below it).
inline std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Text taken from a hostile file: cut to `shown` characters (60: a name or value), control characters
// shown as '?', so that it can neither run on for pages nor break the message's one line nor reach a
// terminal as an escape sequence. virnucpro-host prints every error line through it (a longer `shown`),
// since libtorch's messages may quote the file too (a storage location from data.pkl).
inline std::string printable(const std::string& text, size_t shown = 60) {
  std::string out = text.substr(0, shown);
  for (auto& c : out) {
    if ((c >= 0 && c < 0x20) || c == 0x7f) c = '?';
  }
  return out + (text.size() > shown ? "..." : "");
}

}  // namespace virnucpro
