#include "server/security/unix_socket.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attnscore::security {
namespace {

bool IsSocket(const std::string& path) {
  struct stat info {};
  return lstat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode);
}

}  // namespace

absl::Status CheckUnixSocketPath(absl::string_view path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("--listen-unix: the path is empty");
  }
  if (path.size() > kMaxUnixSocketPath) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen-unix: the path is ", path.size(),
        " bytes, a Unix socket path takes at most ", kMaxUnixSocketPath));
  }
  return absl::OkStatus();
}

absl::StatusOr<mode_t> ParseSocketMode(absl::string_view octal) {
  absl::string_view digits = octal;
  if (absl::StartsWith(digits, "0o")) digits.remove_prefix(2);
  mode_t mode = 0;
  bool valid = !digits.empty() && digits.size() <= 4;
  for (const char c : digits) {
    if (c < '0' || c > '7') {
      valid = false;
      break;
    }
    mode = static_cast<mode_t>(mode * 8 + static_cast<mode_t>(c - '0'));
  }
  if (!valid || mode > 0777) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen-unix-mode: expected octal permission bits from 0 to 0777 "
        "(such as 660), got \"",
        octal, "\""));
  }
  return mode;
}

absl::Status UnixSocketFile::SetMode(mode_t mode) const {
  if (!IsSocket(path_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--listen-unix ", path_, ": no socket there"));
  }
  if (chmod(path_.c_str(), mode) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--listen-unix-mode %04o on %s: %s", mode, path_,
                        std::strerror(errno)));
  }
  return absl::OkStatus();
}

void UnixSocketFile::Remove() {
  if (removed_) return;
  removed_ = true;
  if (IsSocket(path_)) unlink(path_.c_str());
}

}  // namespace attnscore::security
