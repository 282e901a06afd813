// Reads one string member of a JSON object (the EPContext node's `notes`), with a strict little parser.
#pragma once
#include <string>

namespace cortex_ep {

// Parses `json` as one JSON object and sets *value to its top-level member `key`, which must be a string.
// Returns false with a reason in *error when the text is not a JSON object, or the member is missing or not a string.
bool ReadJsonStringMember(const std::string& json, const std::string& key, std::string* value, std::string* error);

}  // namespace cortex_ep
