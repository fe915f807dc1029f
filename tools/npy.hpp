#pragma once
// Minimal NumPy .npy reader and writer for the command line tools: little-endian float32/float64,
// C order, format versions 1.0 to 3.0. Every malformed file is a simclr::ValueError naming the
// file.

#include <cstdint>
#include <string>
#include <vector>

#include "simclr/types.hpp"

namespace simclr::tools {

struct NpyArray {
  DType dtype = DType::kFloat64;
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;  // raw little-endian data, C order

  std::int64_t size() const;
  template <class T>
  const T* data() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  // The values converted to double (for sample weights).
  std::vector<double> to_double() const;
};

// Parses an in-memory .npy image. `what` names it in error messages.
NpyArray parse_npy(const unsigned char* data, std::size_t size, const std::string& what);
// Reads a .npy file: a regular file only (input_file.hpp), its header at most 64 KiB, and exactly
// the data bytes the header announces. Messages name it as "--flag 'path'" ("'path'" without a
// flag).
NpyArray read_npy(const std::string& path, const std::string& flag = "");

// Writes a .npy file atomically (a temporary beside it, then rename): never a partial file.
template <class T>
void write_npy(const std::string& path, const T* data, const std::vector<std::int64_t>& shape);

}  // namespace simclr::tools
