// --listen-unix: the file side of a Unix domain socket listener (gRPC binds
// and serves the socket itself, `unix:PATH`).
//
// A Unix socket serves callers on the same host, or in the same pod through a
// shared volume, without the TCP stack: on a 2-core VM a 64 MiB reply moved
// over one in about half the time loopback TCP took (bench/transport_bench.cc
// measures both). Who may connect is the socket file's permission bits (write
// access is needed to connect), so the file is created owner-only and then
// given the operator's mode, never the process umask's.
//
// Ownership: UnixSocketFile names a path; Remove() (or the destructor) unlinks
// it if a socket is still there. Thread safety: none needed (start-up and
// shutdown, main thread). Errors: INVALID_ARGUMENT for a path or mode that
// cannot work (naming the flag, expected vs. actual), FAILED_PRECONDITION when
// the file cannot be given its mode.
#ifndef ATTNSCORE_SERVER_SECURITY_UNIX_SOCKET_H_
#define ATTNSCORE_SERVER_SECURITY_UNIX_SOCKET_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnscore::security {

// The longest socket path Linux takes (sockaddr_un::sun_path less its NUL).
inline constexpr size_t kMaxUnixSocketPath = 107;

// INVALID_ARGUMENT unless `path` is a usable socket path: not empty and at
// most kMaxUnixSocketPath bytes.
absl::Status CheckUnixSocketPath(absl::string_view path);

// "660", "0660" or "0o660": octal permission bits, at most 0777.
absl::StatusOr<mode_t> ParseSocketMode(absl::string_view octal);

// Sets the process umask for its lifetime, restoring the previous one after:
// around gRPC's bind, so that the socket file is born owner-only.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : previous_(umask(mask)) {}
  ~ScopedUmask() { umask(previous_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  const mode_t previous_;
};

class UnixSocketFile {
 public:
  explicit UnixSocketFile(std::string path) : path_(std::move(path)) {}
  ~UnixSocketFile() { Remove(); }
  UnixSocketFile(const UnixSocketFile&) = delete;
  UnixSocketFile& operator=(const UnixSocketFile&) = delete;

  // chmod: FAILED_PRECONDITION (with errno's text) when the path is not a
  // socket or cannot be changed.
  absl::Status SetMode(mode_t mode) const;
  // Unlinks the path if it is still a socket (never another kind of file);
  // once.
  void Remove();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool removed_ = false;
};

}  // namespace attnscore::security

#endif  // ATTNSCORE_SERVER_SECURITY_UNIX_SOCKET_H_
