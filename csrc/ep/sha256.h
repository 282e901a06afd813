// SHA-256 (FIPS 180-4) of a file, as lowercase hex. Used to check kernel artifacts before loading them.
#pragma once
#include <cstdint>
#include <string>

namespace cortex_ep {

// Returns false (and says why in *error) when the file cannot be read.
bool Sha256File(const std::string& path, std::string* hex_digest, std::string* error);

// The same for an open file, read from its start (the EP hashes the very file it then loads); a file that holds
// more than max_bytes (one that grew since it was checked) is an error.
bool Sha256Fd(int fd, int64_t max_bytes, std::string* hex_digest, std::string* error);

}  // namespace cortex_ep
