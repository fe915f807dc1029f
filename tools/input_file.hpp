#pragma once
// The command line's input files, opened so that a hostile path cannot hang or exhaust the tool:
// only regular files are read. The path's kind is checked with stat() before it is opened, so a
// directory, a FIFO (named pipe, also /dev/stdin or `<(...)` when they are pipes), a character
// device (/dev/zero, a terminal), a block device or a socket is rejected without being opened,
// and the opened descriptor is checked again (the path may have changed in between). Every read is
// bounded by its caller. Each problem is a simclr::ValueError that names the file as `what`.

#include <cstddef>
#include <cstdint>
#include <string>

namespace simclr::tools {

// How a file is named in messages: "--za 'a.npy'" with a flag, "'a.npy'" without.
std::string describe_input(const std::string& path, const std::string& flag);

class InputFile {
 public:
  // Opens `path` for reading. `what` names it in messages (describe_input), `kind` says what it
  // should have been ("a .npy file"): "--za 'x/': is a directory, not a .npy file".
  InputFile(const std::string& path, std::string what, const std::string& kind);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // The file's size in bytes when it was opened.
  std::uint64_t size() const { return size_; }
  const std::string& what() const { return what_; }
  // Reads up to `n` bytes into `out`; fewer only at the end of the file. Returns the count read.
  std::size_t read_up_to(unsigned char* out, std::size_t n);

 private:
  int fd_ = -1;
  std::string what_;
  std::uint64_t size_ = 0;
};

// The whole of a small regular file (a config JSON): at most `max_bytes`, else a ValueError.
std::string read_small_file(const std::string& path, const std::string& what,
                            const std::string& kind, std::size_t max_bytes);

}  // namespace simclr::tools
