#include "input_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "simclr/errors.hpp"

namespace simclr::tools {
namespace {

[[noreturn]] void fail(const std::string& what, const std::string& why) {
  throw ValueError(what + ": " + why);
}

// Why a file that is not regular cannot be read: "is a directory, not a .npy file".
std::string not_regular(mode_t mode, const std::string& kind) {
  if (S_ISDIR(mode)) return "is a directory, not " + kind;
  std::string is;
  if (S_ISFIFO(mode)) {
    is = "is a FIFO (named pipe)";
  } else if (S_ISCHR(mode)) {
    is = "is a character device";
  } else if (S_ISBLK(mode)) {
    is = "is a block device";
  } else if (S_ISSOCK(mode)) {
    is = "is a socket";
  } else {
    is = "is not a regular file";
  }
  return is + ", not " + kind + ": only regular files are read (write the data to a file first)";
}

}  // namespace

std::string describe_input(const std::string& path, const std::string& flag) {
  const std::string quoted = "'" + path + "'";
  return flag.empty() ? quoted : "--" + flag + " " + quoted;
}

InputFile::InputFile(const std::string& path, std::string what, const std::string& kind)
    : what_(std::move(what)) {
  // The kind first, without opening: opening a FIFO blocks until a writer comes, and opening some
  // devices has side effects.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail(what_, std::string("cannot open file: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(what_, not_regular(st.st_mode, kind));
  // O_NONBLOCK: should the path have become a FIFO since stat(), open() still returns at once
  // (and fstat() below rejects it); it has no effect on a regular file's reads.
  do {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  } while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) fail(what_, std::string("cannot open file: ") + std::strerror(errno));
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    const std::string why =
        S_ISREG(st.st_mode) ? std::string("cannot stat the opened file: ") + std::strerror(errno)
                            : not_regular(st.st_mode, kind);
    ::close(fd_);
    fd_ = -1;
    fail(what_, why);
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::size_t InputFile::read_up_to(unsigned char* out, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd_, out + got, n - got);
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(what_, std::string("read error: ") + std::strerror(errno));
    }
    got += static_cast<std::size_t>(r);
  }
  return got;
}

std::string read_small_file(const std::string& path, const std::string& what,
                            const std::string& kind, std::size_t max_bytes) {
  InputFile in(path, what, kind);
  const std::string too_large =
      "is larger than " + std::to_string(max_bytes) + " bytes, the most " + kind + " may have";
  if (in.size() > max_bytes) fail(what, too_large);
  // At most one byte more than its size at open(): a file still growing is cut there, never read
  // without bound.
  std::string text(static_cast<std::size_t>(in.size()) + 1, '\0');
  text.resize(in.read_up_to(reinterpret_cast<unsigned char*>(text.data()), text.size()));
  if (text.size() > max_bytes) fail(what, too_large);
  return text;
}

}  // namespace simclr::tools
