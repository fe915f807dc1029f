#include "npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "input_file.hpp"
#include "simclr/detail/check.hpp"

namespace simclr::tools {
namespace {

[[noreturn]] void fail(const std::string& what, const std::string& why) {
  throw ValueError(what + ": " + why);
}

// Value of `key` in the header dict, e.g. 'descr': '<f8' -> "<f8" (quotes removed) or the raw text.
std::string dict_value(const std::string& header, const std::string& key, const std::string& what) {
  const std::string needle = "'" + key + "'";
  const auto k = header.find(needle);
  if (k == std::string::npos) fail(what, "npy header has no '" + key + "' key");
  auto colon = header.find(':', k + needle.size());
  if (colon == std::string::npos) fail(what, "npy header is malformed near '" + key + "'");
  std::size_t i = colon + 1;
  while (i < header.size() && header[i] == ' ') ++i;
  if (i >= header.size()) fail(what, "npy header is malformed near '" + key + "'");
  if (header[i] == '\'' || header[i] == '"') {
    const char q = header[i];
    const auto end = header.find(q, i + 1);
    if (end == std::string::npos) fail(what, "npy header has an unterminated string");
    return header.substr(i + 1, end - i - 1);
  }
  if (header[i] == '(') {
    const auto end = header.find(')', i);
    if (end == std::string::npos) fail(what, "npy header has an unterminated shape tuple");
    return header.substr(i, end - i + 1);
  }
  auto end = header.find_first_of(",}", i);
  if (end == std::string::npos) end = header.size();
  auto v = header.substr(i, end - i);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

std::vector<std::int64_t> parse_shape(const std::string& tuple, const std::string& what) {
  std::vector<std::int64_t> shape;
  std::size_t i = 1;  // after '('
  while (i < tuple.size()) {
    while (i < tuple.size() && (tuple[i] == ' ' || tuple[i] == ',')) ++i;
    if (i >= tuple.size() || tuple[i] == ')') break;
    if (tuple[i] < '0' || tuple[i] > '9')
      fail(what, "npy shape " + tuple + " is not a tuple of counts");
    std::int64_t v = 0;
    while (i < tuple.size() && tuple[i] >= '0' && tuple[i] <= '9') {
      if (v > (std::numeric_limits<std::int64_t>::max() - 9) / 10)
        fail(what, "npy shape " + tuple + " is too large");
      v = v * 10 + (tuple[i] - '0');
      ++i;
    }
    shape.push_back(v);
    if (shape.size() > 32) fail(what, "npy shape has more than 32 dimensions");
  }
  return shape;
}

// The longest header read. numpy's own reader refuses headers over 10000 bytes unless told
// otherwise (numpy.load's max_header_size); the headers read here (a dtype, a flag and at most 32
// counts) take well under 1 KiB. A larger length field is a corrupt or hostile file, rejected
// before anything is allocated or read for it.
constexpr std::size_t kMaxHeaderBytes = 64 * 1024;

struct Preamble {
  std::size_t header_len = 0;  // bytes of the header dict
  std::size_t start = 0;       // where it starts: 10 (version 1) or 12 (versions 2 and 3)
};

// The magic string, format version and header length at the start of a file of `size` bytes (at
// most the first 12 are looked at).
Preamble parse_preamble(const unsigned char* data, std::size_t size, const std::string& what) {
  static const unsigned char kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size == 0) fail(what, "not a .npy file (bad magic): the file is empty");
  if (size < 6 || std::memcmp(data, kMagic, 6) != 0) fail(what, "not a .npy file (bad magic)");
  if (size < 10) {
    fail(what, "truncated .npy header: " + std::to_string(size) +
                   " bytes, less than the 10-byte preamble");
  }
  const int major = data[6];
  Preamble pre;
  if (major == 1) {
    pre.header_len = static_cast<std::size_t>(data[8]) | (static_cast<std::size_t>(data[9]) << 8);
    pre.start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) fail(what, "truncated .npy header: the version 2 and 3 preamble is 12 bytes");
    pre.header_len = static_cast<std::size_t>(data[8]) | (static_cast<std::size_t>(data[9]) << 8) |
                     (static_cast<std::size_t>(data[10]) << 16) |
                     (static_cast<std::size_t>(data[11]) << 24);
    pre.start = 12;
  } else {
    fail(what, "unsupported .npy format version " + std::to_string(major) +
                   " (versions 1.0 to 3.0 are read)");
  }
  if (pre.header_len > kMaxHeaderBytes) {
    fail(what, "npy header length " + std::to_string(pre.header_len) + " bytes is over the " +
                   std::to_string(kMaxHeaderBytes) +
                   "-byte limit (numpy's own reader stops at 10000): the file is corrupt");
  }
  return pre;
}

[[noreturn]] void fail_header_size(const std::string& what, const Preamble& pre,
                                   std::size_t present) {
  fail(what, "truncated .npy header: the preamble announces " + std::to_string(pre.header_len) +
                 " bytes of header, " + std::to_string(present) + " present");
}

// The header dict, parsed: dtype and shape (no data), and the data's exact size.
struct Header {
  NpyArray array;
  std::int64_t count = 0;        // elements
  std::uint64_t data_bytes = 0;  // count * element size, checked to fit in int64
};

Header parse_header(const std::string& header, const std::string& what) {
  const std::string descr = dict_value(header, "descr", what);
  const std::string fortran = dict_value(header, "fortran_order", what);
  const std::string shape_text = dict_value(header, "shape", what);

  Header h;
  NpyArray& out = h.array;
  if (descr == "<f4") {
    out.dtype = DType::kFloat32;
  } else if (descr == "<f8") {
    out.dtype = DType::kFloat64;
  } else if (descr == ">f4" || descr == ">f8") {
    fail(what, "big-endian data ('" + descr +
                   "') is not supported; save it as little-endian (numpy: "
                   "a.astype(a.dtype.newbyteorder('<')))");
  } else {
    fail(what, "dtype '" + descr + "' is not supported; use float32 ('<f4') or float64 ('<f8')");
  }
  if (fortran != "False")
    fail(what, "Fortran-order arrays are not supported; save a C-order array");
  if (shape_text.empty() || shape_text.front() != '(') fail(what, "npy shape is not a tuple");
  out.shape = parse_shape(shape_text, what);
  const std::size_t elem = out.dtype == DType::kFloat32 ? 4 : 8;
  // The element count, exactly. Its byte size must fit in int64 even when a zero dimension makes
  // the count 0, since NpyArray::size() multiplies the dimensions in order (fuzzer findings: a
  // double count converted to long long out of range, and an int64 overflow behind a zero
  // dimension).
  const std::int64_t max_elems =
      std::numeric_limits<std::int64_t>::max() / static_cast<std::int64_t>(elem);
  std::int64_t count = 1, nonzero = 1;
  for (auto s : out.shape) {
    if (s != 0 && nonzero > max_elems / s) fail(what, "npy shape " + shape_text + " is too large");
    if (s != 0) nonzero *= s;
    count *= s;
  }
  h.count = count;
  h.data_bytes = static_cast<std::uint64_t>(count) * elem;
  return h;
}

// The data is not the size the header announces: fewer bytes (truncated) or more.
[[noreturn]] void fail_data_size(const std::string& what, const Header& h, std::uint64_t present) {
  if (h.data_bytes > present) {
    fail(what, "file is truncated: the header says " + std::to_string(h.count) + " elements (" +
                   std::to_string(h.data_bytes) + " bytes of data), " + std::to_string(present) +
                   " bytes present");
  }
  fail(what, "npy data size " + std::to_string(present) + " bytes does not match its shape (" +
                 std::to_string(h.data_bytes) + " bytes)");
}

}  // namespace

std::int64_t NpyArray::size() const {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::vector<double> NpyArray::to_double() const {
  std::vector<double> out(static_cast<std::size_t>(size()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = dtype == DType::kFloat32 ? static_cast<double>(data<float>()[i]) : data<double>()[i];
  }
  return out;
}

NpyArray parse_npy(const unsigned char* data, std::size_t size, const std::string& what) {
  const Preamble pre = parse_preamble(data, size, what);
  if (pre.header_len > size - pre.start) fail_header_size(what, pre, size - pre.start);
  const Header h = parse_header(
      std::string(reinterpret_cast<const char*>(data + pre.start), pre.header_len), what);
  const std::size_t available = size - pre.start - pre.header_len;
  if (h.data_bytes != available) fail_data_size(what, h, available);
  NpyArray out = h.array;
  out.bytes.assign(data + pre.start + pre.header_len, data + size);
  return out;
}

// Reads only what the header announces: the preamble (10 or 12 bytes), a header of at most
// kMaxHeaderBytes, then exactly the data bytes its shape and dtype make, after checking the file's
// size holds them (so a false shape allocates nothing). InputFile rejects anything not a regular
// file before opening it.
NpyArray read_npy(const std::string& path, const std::string& flag) {
  InputFile in(path, describe_input(path, flag), "a .npy file");
  const std::string& what = in.what();
  unsigned char pre_bytes[12] = {};
  std::size_t got = in.read_up_to(pre_bytes, 10);
  if (got == 10 && (pre_bytes[6] == 2 || pre_bytes[6] == 3))
    got += in.read_up_to(pre_bytes + 10, 2);
  const Preamble pre = parse_preamble(pre_bytes, got, what);
  std::string header(pre.header_len, '\0');
  const std::size_t header_got =
      in.read_up_to(reinterpret_cast<unsigned char*>(header.data()), header.size());
  if (header_got < pre.header_len) fail_header_size(what, pre, header_got);
  const Header h = parse_header(header, what);
  const std::uint64_t offset = pre.start + pre.header_len;
  const std::uint64_t present = in.size() > offset ? in.size() - offset : 0;
  if (h.data_bytes != present) fail_data_size(what, h, present);
  NpyArray out = h.array;
  out.bytes.resize(static_cast<std::size_t>(h.data_bytes));
  const std::size_t data_got = in.read_up_to(out.bytes.data(), out.bytes.size());
  if (data_got < out.bytes.size()) fail_data_size(what, h, data_got);  // shrank since opened
  return out;
}

template <class T>
void write_npy(const std::string& path, const T* data, const std::vector<std::int64_t>& shape) {
  std::ostringstream dict;
  dict << "{'descr': '" << (sizeof(T) == 4 ? "<f4" : "<f8")
       << "', 'fortran_order': False, 'shape': (";
  std::int64_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) dict << " ";
    count *= shape[i];
  }
  dict << "), }";
  std::string header = dict.str();
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  const std::string tmp = path + ".tmp-simclr";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, "cannot open for writing");
    const unsigned char pre[] = {0x93,
                                 'N',
                                 'U',
                                 'M',
                                 'P',
                                 'Y',
                                 1,
                                 0,
                                 static_cast<unsigned char>(header.size() & 0xff),
                                 static_cast<unsigned char>(header.size() >> 8)};
    out.write(reinterpret_cast<const char*>(pre), sizeof(pre));
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(T)));
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      fail(path, "write error");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(path, "cannot move the written file into place");
  }
}

template void write_npy<float>(const std::string&, const float*, const std::vector<std::int64_t>&);
template void write_npy<double>(const std::string&, const double*,
                                const std::vector<std::int64_t>&);

}  // namespace simclr::tools
