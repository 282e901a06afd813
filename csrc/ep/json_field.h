// Reads the top-level members of a JSON object (the EPContext node's `notes`), with a strict little parser.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace cortex_ep {

struct JsonMember {
  enum class Kind { kString, kStringArray, kOther };
  Kind kind = Kind::kOther;
  std::string string_value;        // kString
  std::vector<std::string> items;  // kStringArray
};
using JsonObject = std::map<std::string, JsonMember>;

// Parses `json` as one JSON object (nested values are checked for well-formedness and skipped). Returns false with
// a reason in *error when the text is not one well-formed object or a member name appears twice.
bool ParseJsonObject(const std::string& json, JsonObject* members, std::string* error);

// Parses `json` as one JSON object and sets *value to its top-level member `key`, which must be a string.
// Returns false with a reason in *error when the text is not a JSON object, or the member is missing or not a string.
bool ReadJsonStringMember(const std::string& json, const std::string& key, std::string* value, std::string* error);

}  // namespace cortex_ep
