#include "server/frontend/json_reader.h"

#include <charconv>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dino::frontend {
namespace {

using nlohmann::json;

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

class Reader {
 public:
  Reader(absl::string_view text, int max_depth) : text_(text), max_depth_(max_depth) {}

  absl::StatusOr<json> Document() {
    json value;
    SkipWhitespace();
    if (!Value(0, &value)) return error_;
    SkipWhitespace();
    if (pos_ != text_.size()) {
      Fail("the end of the document");
      return error_;
    }
    return value;
  }

 private:
  // Records what was expected at the current offset; returns false for the callers to pass on.
  bool Fail(absl::string_view expected) {
    error_ = absl::InvalidArgumentError(
        pos_ < text_.size()
            ? absl::StrCat("at byte ", pos_, ": expected ", expected, ", got '",
                           text_.substr(pos_, 1), "'")
            : absl::StrCat("at byte ", pos_, ": expected ", expected, ", but the document ends"));
    return false;
  }

  void SkipWhitespace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  bool Value(int depth, json* out) {
    if (pos_ >= text_.size()) return Fail("a value");
    switch (text_[pos_]) {
      case '{':
        return Object(depth + 1, out);
      case '[':
        return Array(depth + 1, out);
      case '"': {
        std::string s;
        if (!String(&s)) return false;
        *out = std::move(s);
        return true;
      }
      case 't':
        return Literal("true", json(true), out);
      case 'f':
        return Literal("false", json(false), out);
      case 'n':
        return Literal("null", json(nullptr), out);
      default:
        return Number(out);
    }
  }

  bool Literal(absl::string_view word, json value, json* out) {
    if (text_.substr(pos_, word.size()) != word) return Fail(absl::StrCat("'", word, "'"));
    pos_ += word.size();
    *out = std::move(value);
    return true;
  }

  bool Object(int depth, json* out) {
    if (depth > max_depth_) return Fail(absl::StrCat("at most ", max_depth_, " levels of nesting"));
    ++pos_;  // '{'
    *out = json::object();
    SkipWhitespace();
    if (Consume('}')) return true;
    while (true) {
      SkipWhitespace();
      if (pos_ >= text_.size() || text_[pos_] != '"') return Fail("a string key");
      std::string key;
      if (!String(&key)) return false;
      SkipWhitespace();
      if (!Consume(':')) return Fail("':'");
      SkipWhitespace();
      json value;
      if (!Value(depth, &value)) return false;
      (*out)[key] = std::move(value);
      SkipWhitespace();
      if (Consume('}')) return true;
      if (!Consume(',')) return Fail("',' or '}'");
    }
  }

  bool Array(int depth, json* out) {
    if (depth > max_depth_) return Fail(absl::StrCat("at most ", max_depth_, " levels of nesting"));
    ++pos_;  // '['
    *out = json::array();
    auto& elements = out->get_ref<json::array_t&>();
    SkipWhitespace();
    if (Consume(']')) return true;
    while (true) {
      SkipWhitespace();
      elements.emplace_back();
      if (!Value(depth, &elements.back())) return false;
      SkipWhitespace();
      if (Consume(']')) return true;
      if (!Consume(',')) return Fail("',' or ']'");
    }
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  bool Number(json* out) {
    const size_t start = pos_;
    Consume('-');
    if (Consume('0')) {
    } else if (pos_ < text_.size() && IsDigit(text_[pos_])) {
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    } else {
      return Fail("a value");
    }
    bool integral = true;
    if (Consume('.')) {
      integral = false;
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) return Fail("a digit after '.'");
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    bool negative_exponent = false;
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      negative_exponent = Consume('-');
      if (!negative_exponent) Consume('+');
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) return Fail("a digit in the exponent");
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral) {
      int64_t integer = 0;
      if (std::from_chars(first, last, integer).ec == std::errc()) {
        *out = integer;
        return true;
      }  // Beyond int64: a double.
    }
    double value = 0;
    const std::from_chars_result result = std::from_chars(first, last, value);
    if (result.ec == std::errc::result_out_of_range) {
      if (!negative_exponent) {
        pos_ = start;
        return Fail(absl::StrCat("a number within double's range, not ",
                                 absl::string_view(first, last - first)));
      }
      value = *first == '-' ? -0.0 : 0.0;  // Below the smallest subnormal: zero.
    } else if (result.ec != std::errc() || result.ptr != last) {
      pos_ = start;
      return Fail("a number");
    }
    *out = value;
    return true;
  }

  bool Hex4(uint32_t* code) {
    if (pos_ + 4 > text_.size()) return Fail("four hexadecimal digits");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_];
      value <<= 4;
      if (IsDigit(c)) {
        value |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        value |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        value |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Fail("a hexadecimal digit");
      }
      ++pos_;
    }
    *code = value;
    return true;
  }

  static void AppendUtf8(uint32_t code, std::string* out) {
    if (code < 0x80) {
      out->push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (code >> 6)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (code >> 12)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (code >> 18)));
      out->push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  // The length of the well-formed UTF-8 sequence at pos_ (no overlong forms, no surrogates,
  // nothing above U+10FFFF), or 0.
  size_t Utf8Length() const {
    const auto byte = [&](size_t i) {
      return pos_ + i < text_.size() ? static_cast<unsigned char>(text_[pos_ + i]) : 0u;
    };
    const auto continuation = [&](size_t i) { return (byte(i) & 0xC0) == 0x80; };
    const unsigned lead = byte(0);
    if (lead >= 0xC2 && lead <= 0xDF) return continuation(1) ? 2 : 0;
    if (lead >= 0xE0 && lead <= 0xEF) {
      const unsigned second = byte(1);
      if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second > 0x9F)) return 0;
      return continuation(1) && continuation(2) ? 3 : 0;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
      const unsigned second = byte(1);
      if ((lead == 0xF0 && second < 0x90) || (lead == 0xF4 && second > 0x8F)) return 0;
      return continuation(1) && continuation(2) && continuation(3) ? 4 : 0;
    }
    return 0;
  }

  bool String(std::string* out) {
    ++pos_;  // '"'
    while (true) {
      if (pos_ >= text_.size()) return Fail("'\"' closing the string");
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return Fail("no control character in a string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        const size_t length = Utf8Length();
        if (length == 0) return Fail("UTF-8 text");
        out->append(text_.data() + pos_, length);
        pos_ += length;
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) return Fail("an escape");
      const char escape = text_[pos_++];
      switch (escape) {
        case '"':
        case '\\':
        case '/':
          out->push_back(escape);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t code = 0;
          if (!Hex4(&code)) return false;
          if (code >= 0xDC00 && code <= 0xDFFF) return Fail("a high surrogate before a low one");
          if (code >= 0xD800 && code <= 0xDBFF) {
            uint32_t low = 0;
            if (!Consume('\\') || !Consume('u')) return Fail("'\\u' of a low surrogate");
            if (!Hex4(&low)) return false;
            if (low < 0xDC00 || low > 0xDFFF) return Fail("a low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(code, out);
          break;
        }
        default:
          --pos_;
          return Fail("an escape (\\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\u)");
      }
    }
  }

  const absl::string_view text_;
  const int max_depth_;
  size_t pos_ = 0;
  absl::Status error_;
};

}  // namespace

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, int max_depth) {
  return Reader(text, max_depth).Document();
}

}  // namespace dino::frontend
