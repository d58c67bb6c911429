// `attnscore health`, `models` and `info`: probing a deployment.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

namespace attnscore::cli {
namespace {

// Between health probes while --wait runs.
constexpr absl::Duration kHealthPollInterval = absl::Milliseconds(200);
// The longest wait between connection attempts while --wait runs.
constexpr absl::Duration kHealthMaxReconnectBackoff = absl::Seconds(1);

// "name (who chose it)", or "" when the server did not say.
std::string Chosen(const std::string& name, const std::string& source) {
  if (name.empty()) return "";
  return source.empty() ? name : absl::StrCat(name, " (", source, ")");
}

// The kernels lines of `info`: nothing from a server that does not report
// them; a warning line when the operator's settings cost something.
void PrintKernels(const client::ServerInfo::Kernels& kernels) {
  if (kernels.isa.empty()) return;
  std::printf(
      "kernels           isa %s, BLAS %s, ATen %s\n", kernels.isa.c_str(),
      Chosen(kernels.blas_core.empty() ? "(not OpenBLAS)" : kernels.blas_core,
             kernels.blas_core_source)
          .c_str(),
      Chosen(kernels.aten_capability, kernels.aten_capability_source).c_str());
  std::printf("                  cpu %s, OpenMP wait %s\n",
              kernels.cpu_model.c_str(),
              Chosen(kernels.omp_wait, kernels.omp_wait_source).c_str());
  if (!kernels.below_cpu.empty()) {
    std::printf("kernels warning   %s\n", kernels.below_cpu.c_str());
  }
}

}  // namespace

CLI::App* AddHealthCommand(CLI::App& app, HealthFlags& flags) {
  CLI::App* cmd =
      app.add_subcommand("health",
                         "grpc.health.v1 check: exit 0 when SERVING, 1 "
                         "otherwise (not serving, unknown service, "
                         "unreachable). For container healthchecks");
  cmd->add_option("--service", flags.service,
                  absl::StrCat("Service to check: ", client::ServiceName(),
                               " is readiness (warm and not draining), '' "
                               "liveness"))
      ->envname("ATTNSCORE_HEALTH_SERVICE")
      ->capture_default_str();
  cmd->add_option(
         "--wait", flags.wait,
         "Keep probing up to this long (seconds or e.g. 30s) until SERVING")
      ->capture_default_str();
  return cmd;
}

int RunHealth(const GlobalFlags& global, const HealthFlags& flags) {
  absl::StatusOr<absl::Duration> wait = ParseDurationFlag("--wait", flags.wait);
  if (!wait.ok()) return Fail("health", wait.status(), kExitUsage);
  absl::StatusOr<absl::Duration> timeout =
      ParseDurationFlag("--timeout", global.timeout);
  if (!timeout.ok()) return Fail("health", timeout.status(), kExitUsage);
  // A health probe is a single attempt: retrying UNAVAILABLE inside it would
  // only hide the answer the caller wants.
  GlobalFlags probe_flags = global;
  probe_flags.retry_attempts = 1;
  // While --wait runs, try to connect at least once a second: gRPC's backoff
  // would otherwise leave a server that came up between attempts waiting
  // seconds for the next one.
  if (absl::StatusOr<absl::Duration> backoff = ParseDurationFlag(
          "--max-reconnect-backoff", global.max_reconnect_backoff);
      backoff.ok() && *backoff > kHealthMaxReconnectBackoff) {
    probe_flags.max_reconnect_backoff =
        absl::FormatDuration(kHealthMaxReconnectBackoff);
  }
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      MakeClient(probe_flags);
  if (!client.ok()) return Fail("health", client.status(), kExitUsage);

  const absl::Time give_up = absl::Now() + *wait;
  while (true) {
    client::CallOptions call;
    // Never past --wait's end, but at least one full probe.
    const absl::Duration left = give_up - absl::Now();
    call.timeout = std::max(std::min(*timeout, left),
                            std::min(*timeout, absl::Seconds(5)));
    absl::StatusOr<client::ServingStatus> status =
        (*client)->Health(flags.service, call);
    if (status.ok() && *status == client::ServingStatus::kServing) {
      std::printf("%s\n", client::ServingStatusName(*status));
      return kExitOk;
    }
    if (absl::Now() + kHealthPollInterval >= give_up) {
      if (status.ok()) {
        std::printf("%s\n", client::ServingStatusName(*status));
        return kExitFailed;
      }
      return Fail("health", status.status(), kExitFailed);
    }
    std::this_thread::sleep_for(
        absl::ToChronoMilliseconds(kHealthPollInterval));
  }
}

CLI::App* AddModelsCommand(CLI::App& app, InfoFlags& flags) {
  CLI::App* cmd = app.add_subcommand(
      "models",
      "List the relative-position parameter sets the server has loaded");
  cmd->add_option("--format", flags.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  return cmd;
}

int RunModels(const GlobalFlags& global, const InfoFlags& flags) {
  absl::StatusOr<std::unique_ptr<client::Client>> client = MakeClient(global);
  if (!client.ok()) return Fail("models", client.status(), kExitUsage);
  absl::StatusOr<std::vector<client::ModelInfo>> models =
      (*client)->ListModels();
  if (!models.ok()) return Fail("models", models.status(), kExitFailed);
  if (flags.format == "json") {
    nlohmann::json out = nlohmann::json::array();
    for (const client::ModelInfo& m : *models) {
      out.push_back({{"name", m.name},
                     {"source", m.source},
                     {"heads", m.heads},
                     {"head_dim", m.head_dim},
                     {"max_relative_positions", m.max_relative_positions}});
    }
    std::printf("%s\n", out.dump(2, ' ', false,
                                 nlohmann::json::error_handler_t::replace)
                            .c_str());
    return kExitOk;
  }
  if (models->empty()) {
    std::printf("(no models: the server has no --model-dir, or it is empty)\n");
    return kExitOk;
  }
  std::printf("%-24s %6s %8s %8s  %s\n", "NAME", "HEADS", "HEAD_DIM", "MAX_POS",
              "SOURCE");
  for (const client::ModelInfo& m : *models) {
    std::printf(
        "%-24s %6lld %8lld %8lld  %s\n", m.name.c_str(),
        static_cast<long long>(m.heads), static_cast<long long>(m.head_dim),
        static_cast<long long>(m.max_relative_positions), m.source.c_str());
  }
  return kExitOk;
}

CLI::App* AddInfoCommand(CLI::App& app, InfoFlags& flags) {
  CLI::App* cmd = app.add_subcommand(
      "info", "Server version, device, limits and batching options");
  cmd->add_option("--format", flags.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  return cmd;
}

int RunInfo(const GlobalFlags& global, const InfoFlags& flags) {
  absl::StatusOr<std::unique_ptr<client::Client>> client = MakeClient(global);
  if (!client.ok()) return Fail("info", client.status(), kExitUsage);
  absl::StatusOr<client::ServerInfo> info = (*client)->GetServerInfo();
  if (!info.ok()) return Fail("info", info.status(), kExitFailed);
  const nlohmann::json out = {
      {"version", info->version},
      {"device", info->device},
      {"intra_op_threads", info->intra_op_threads},
      {"limits",
       {{"max_heads", info->max_heads},
        {"max_head_dim", info->max_head_dim},
        {"max_seq_len", info->max_seq_len},
        {"max_output_bytes", info->max_output_bytes},
        {"max_message_bytes", info->max_message_bytes}}},
      {"batching",
       {{"max_batch_size", info->max_batch_size},
        {"max_queue_delay_us", info->max_queue_delay_us},
        {"max_queue", info->max_queue},
        {"batch_workers", info->batch_workers}}},
      {"shared_memory",
       {{"prefix", info->shm_prefix}, {"max_regions", info->max_shm_regions}}},
      {"kernels",
       {{"cpu_model", info->kernels.cpu_model},
        {"isa", info->kernels.isa},
        {"blas_core", info->kernels.blas_core},
        {"blas_core_source", info->kernels.blas_core_source},
        {"aten_capability", info->kernels.aten_capability},
        {"aten_capability_source", info->kernels.aten_capability_source},
        {"omp_wait", info->kernels.omp_wait},
        {"omp_wait_source", info->kernels.omp_wait_source},
        {"below_cpu", info->kernels.below_cpu}}}};
  if (flags.format == "json") {
    std::printf("%s\n", out.dump(2, ' ', false,
                                 nlohmann::json::error_handler_t::replace)
                            .c_str());
    return kExitOk;
  }
  std::printf("version           %s\n", info->version.c_str());
  std::printf("device            %s (%d intra-op threads)\n",
              info->device.c_str(), info->intra_op_threads);
  std::printf(
      "limits            heads <= %lld, head_dim <= %lld, seq_len <= %lld\n",
      static_cast<long long>(info->max_heads),
      static_cast<long long>(info->max_head_dim),
      static_cast<long long>(info->max_seq_len));
  std::printf("                  output <= %lld bytes, message <= %lld bytes\n",
              static_cast<long long>(info->max_output_bytes),
              static_cast<long long>(info->max_message_bytes));
  std::printf(
      "batching          max batch %lld items, delay %lld us, queue %lld, %d "
      "workers\n",
      static_cast<long long>(info->max_batch_size),
      static_cast<long long>(info->max_queue_delay_us),
      static_cast<long long>(info->max_queue), info->batch_workers);
  if (info->shm_prefix.empty()) {
    std::printf("shared memory     off\n");
  } else {
    std::printf("shared memory     objects \"%s*\", at most %lld regions\n",
                info->shm_prefix.c_str(),
                static_cast<long long>(info->max_shm_regions));
  }
  PrintKernels(info->kernels);
  return kExitOk;
}

}  // namespace attnscore::cli
