#include "json_field.h"

#include <cstdint>

namespace cortex_ep {
namespace {

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : text_(text) {}

  // Parses the text as one JSON object; each top-level member becomes a JsonMember. A name given twice is an
  // error: two readers of one document must never see different values.
  bool ParseObject(JsonObject* members, std::string* error) {
    members->clear();
    SkipSpace();
    if (!Consume('{')) return Fail("expected a JSON object", error);
    SkipSpace();
    if (!Consume('}')) {
      for (;;) {
        std::string name;
        SkipSpace();
        if (!ReadString(&name)) return Fail("expected a member name", error);
        SkipSpace();
        if (!Consume(':')) return Fail("expected ':'", error);
        SkipSpace();
        JsonMember member;
        if (!ReadMemberValue(&member)) return Fail("malformed value of member \"" + name + "\"", error);
        if (!members->emplace(name, std::move(member)).second) {
          return Fail("member \"" + name + "\" appears twice", error);
        }
        SkipSpace();
        if (Consume('}')) break;
        if (!Consume(',')) return Fail("expected ',' or '}'", error);
      }
    }
    SkipSpace();
    if (pos_ != text_.size()) return Fail("trailing characters after the object", error);
    return true;
  }

 private:
  // A string, an array of strings, or (kOther) any other well-formed value, skipped.
  bool ReadMemberValue(JsonMember* member) {
    if (Peek() == '"') {
      member->kind = JsonMember::Kind::kString;
      return ReadString(&member->string_value);
    }
    if (Peek() == '[') {
      const size_t start = pos_;
      ++pos_;
      SkipSpace();
      member->kind = JsonMember::Kind::kStringArray;
      if (Consume(']')) return true;
      for (;;) {
        SkipSpace();
        std::string item;
        if (Peek() != '"' || !ReadString(&item)) {  // not an array of strings: skip it whole as another value
          pos_ = start;
          member->kind = JsonMember::Kind::kOther;
          member->items.clear();
          return SkipValue(0);
        }
        member->items.push_back(std::move(item));
        SkipSpace();
        if (Consume(']')) return true;
        if (!Consume(',')) return false;
      }
    }
    member->kind = JsonMember::Kind::kOther;
    return SkipValue(0);
  }

  bool Fail(const std::string& what, std::string* error) const {
    *error = what + " at offset " + std::to_string(pos_);
    return false;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }
  bool Consume(char c) {
    if (Peek() != c || AtEnd()) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (!AtEnd() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  static void AppendUtf8(uint32_t code_point, std::string* out) {
    if (code_point < 0x80) {
      *out += static_cast<char>(code_point);
    } else if (code_point < 0x800) {
      *out += static_cast<char>(0xC0 | (code_point >> 6));
      *out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else if (code_point < 0x10000) {
      *out += static_cast<char>(0xE0 | (code_point >> 12));
      *out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else {
      *out += static_cast<char>(0xF0 | (code_point >> 18));
      *out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
      *out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (code_point & 0x3F));
    }
  }

  bool ReadHex4(uint32_t* out) {
    if (pos_ + 4 > text_.size()) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return false;
    }
    *out = v;
    return true;
  }

  bool ReadString(std::string* out) {
    out->clear();
    if (!Consume('"')) return false;
    while (!AtEnd()) {
      const char c = text_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (AtEnd()) return false;
      const char escaped = text_[pos_++];
      switch (escaped) {
        case '"': *out += '"'; break;
        case '\\': *out += '\\'; break;
        case '/': *out += '/'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'n': *out += '\n'; break;
        case 'r': *out += '\r'; break;
        case 't': *out += '\t'; break;
        case 'u': {
          uint32_t code_point;
          if (!ReadHex4(&code_point)) return false;
          if (code_point >= 0xD800 && code_point < 0xDC00) {  // a surrogate pair
            uint32_t low;
            if (!Consume('\\') || !Consume('u') || !ReadHex4(&low) || low < 0xDC00 || low >= 0xE000) return false;
            code_point = 0x10000 + ((code_point - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(code_point, out);
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  bool SkipNumber() {
    const size_t start = pos_;
    Consume('-');
    while (!AtEnd() && ((text_[pos_] >= '0' && text_[pos_] <= '9') || text_[pos_] == '.' || text_[pos_] == 'e' ||
                        text_[pos_] == 'E' || text_[pos_] == '+' || text_[pos_] == '-')) {
      ++pos_;
    }
    return pos_ > start;
  }

  bool SkipLiteral(const char* word) {
    const std::string w(word);
    if (text_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }

  bool SkipValue(int depth) {
    if (depth > 64) return false;
    std::string ignored;
    switch (Peek()) {
      case '"': return ReadString(&ignored);
      case '{':
      case '[': {
        const char close = Peek() == '{' ? '}' : ']';
        const bool is_object = close == '}';
        ++pos_;
        SkipSpace();
        if (Consume(close)) return true;
        for (;;) {
          SkipSpace();
          if (is_object) {
            if (!ReadString(&ignored)) return false;
            SkipSpace();
            if (!Consume(':')) return false;
            SkipSpace();
          }
          if (!SkipValue(depth + 1)) return false;
          SkipSpace();
          if (Consume(close)) return true;
          if (!Consume(',')) return false;
        }
      }
      case 't': return SkipLiteral("true");
      case 'f': return SkipLiteral("false");
      case 'n': return SkipLiteral("null");
      default: return SkipNumber();
    }
  }

  const std::string& text_;
  size_t pos_ = 0;
};

}  // namespace

bool ParseJsonObject(const std::string& json, JsonObject* members, std::string* error) {
  return JsonReader(json).ParseObject(members, error);
}

bool ReadJsonStringMember(const std::string& json, const std::string& key, std::string* value, std::string* error) {
  JsonObject members;
  if (!ParseJsonObject(json, &members, error)) return false;
  const auto it = members.find(key);
  if (it == members.end()) {
    *error = "no member \"" + key + "\"";
    return false;
  }
  if (it->second.kind != JsonMember::Kind::kString) {
    *error = "member \"" + key + "\" is not a string";
    return false;
  }
  *value = it->second.string_value;
  return true;
}

}  // namespace cortex_ep
