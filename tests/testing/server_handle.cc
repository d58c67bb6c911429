#include "tests/testing/server_handle.h"

#include <memory>
#include <string>
#include <utility>

#include "tests/testing/server_process.h"

namespace attnscore::testing {

absl::StatusOr<std::unique_ptr<ServerHandle>> ServerHandle::Start() {
  absl::StatusOr<std::unique_ptr<ServerProcess>> process =
      ServerProcess::Start();
  if (!process.ok()) return process.status();
  return std::unique_ptr<ServerHandle>(new ServerHandle(*std::move(process)));
}

ServerHandle::ServerHandle(std::unique_ptr<ServerProcess> process)
    : process_(std::move(process)) {}

ServerHandle::~ServerHandle() = default;

std::string ServerHandle::target() const { return process_->target(); }

}  // namespace attnscore::testing
