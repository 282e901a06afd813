// SHA-256 (FIPS 180-4) of a file, as lowercase hex. Used to check kernel artifacts before loading them.
#pragma once
#include <string>

namespace cortex_ep {

// Returns false (and says why in *error) when the file cannot be read.
bool Sha256File(const std::string& path, std::string* hex_digest, std::string* error);

// The same for an open file, read from its start (the EP hashes the very file it then loads).
bool Sha256Fd(int fd, std::string* hex_digest, std::string* error);

}  // namespace cortex_ep
