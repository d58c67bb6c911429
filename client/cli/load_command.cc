// `attnscore load`: the load tester (client/load/). Flags follow ghz where ghz
// has them (-c, -n, -z, -r, --connections, --format, -o); the rest is ours
// (open-loop arrivals, presets, shapes, --max-error-rate).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/cli/commands.h"
#include "client/load/report.h"
#include "client/load/runner.h"
#include "client/load/workload.h"
#include "client/shared_memory.h"
#include "common/cli_checks.h"

namespace attnscore::cli {
namespace {

namespace load = ::attnscore::client::load;

// The run's set-up and clean-up calls (the model check, server info, the
// region's registration): --timeout is the measured requests' deadline, often
// tight on purpose (a 25 ms --timeout failed the registration of a loaded
// server); these get at least this long.
constexpr absl::Duration kSetupTimeout = absl::Seconds(10);

client::CallOptions SetupCall(const client::Client& client) {
  client::CallOptions call;
  call.timeout = std::max(client.options().default_timeout, kSetupTimeout);
  return call;
}

// Checks a relative-mode run against the server's models before sending
// anything, so that a typo gives one clear message instead of N identical
// errors.
absl::Status CheckModel(client::Client& client,
                        const load::Workload& workload) {
  if (workload.options().mode != "relative") return absl::OkStatus();
  absl::StatusOr<std::vector<client::ModelInfo>> models =
      client.ListModels(SetupCall(client));
  if (!models.ok()) return models.status();
  for (const client::ModelInfo& m : *models) {
    if (m.name != workload.options().model) continue;
    for (const load::Workload::Kind& kind : workload.kinds()) {
      const load::RequestShape& s = kind.shape;
      if (s.heads != m.heads || s.head_dim != m.head_dim ||
          std::max(s.query_len, s.key_len) > m.max_relative_positions) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "shape %s does not fit model %s (H %d, D %d, max(Lq, Lk) <= %d)",
            kind.name, m.name, m.heads, m.head_dim, m.max_relative_positions));
      }
    }
    return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (const client::ModelInfo& m : *models) names.push_back(m.name);
  return absl::NotFoundError(absl::StrCat(
      "model '", workload.options().model, "' is not loaded; the server has: ",
      names.empty() ? "(none)" : absl::StrJoin(names, ", ")));
}

// --shared-memory: every kind's inputs in one region of the server's
// --shm-prefix, registered as `name` for the run, so that requests carry
// ranges instead of bytes; with `output_slots` > 0 (--shared-outputs) that
// many output slots follow them, for the server to write the outputs into.
// FAILED_PRECONDITION when the server has shared memory off; the region's and
// the registration's errors otherwise.
absl::StatusOr<client::SharedMemoryRegion> ShareMemory(client::Client& client,
                                                       load::Workload& workload,
                                                       const std::string& name,
                                                       int output_slots) {
  absl::StatusOr<client::ServerInfo> info =
      client.GetServerInfo(SetupCall(client));
  if (!info.ok()) return info.status();
  if (info->shm_prefix.empty()) {
    return absl::FailedPreconditionError(
        "--shared-memory: the server has shared memory off (it runs without "
        "--shm-prefix)");
  }
  absl::StatusOr<client::SharedMemoryRegion> region =
      client::SharedMemoryRegion::Create(info->shm_prefix + name,
                                         workload.SharedBytes(output_slots));
  if (!region.ok()) return region.status();
  if (absl::Status s = client.RegisterSharedMemory(region->Registration(name),
                                                   SetupCall(client));
      !s.ok()) {
    return s;
  }
  workload.UseSharedInputs(name, region->data());
  if (output_slots > 0) {
    workload.UseSharedOutputs(name, output_slots);
  }
  return region;
}

// The workload's options from the flags. CLI11 has already checked the
// flags with a fixed set of values (mode, causal, dtype, output dtype).
absl::StatusOr<load::WorkloadOptions> WorkloadOptionsFrom(
    const LoadFlags& flags) {
  load::WorkloadOptions options;
  options.preset = flags.preset;
  options.shapes = flags.shapes;
  options.mode = flags.mode;
  options.model = flags.model;
  options.causal = flags.causal == "true";
  options.outputs = client::Outputs{false, false, false};
  for (absl::string_view part :
       absl::StrSplit(flags.outputs, ',', absl::SkipWhitespace())) {
    const std::string name =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(part));
    if (name == "logits") {
      options.outputs.logits = true;
    } else if (name == "probs") {
      options.outputs.probs = true;
    } else if (name == "context") {
      options.outputs.context = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--outputs: unknown output '", name, "'"));
    }
  }
  options.dtype = *ParseDType(flags.dtype);
  if (!flags.output_dtype.empty()) {
    options.output_dtype = ParseDType(flags.output_dtype);
  }
  options.seed = flags.seed;
  return options;
}

// How long the run sends: -z, -n and the --max-duration bound.
absl::Status SetRunLength(const LoadFlags& flags, load::LoadOptions& options) {
  if (!flags.duration.empty()) {
    absl::StatusOr<absl::Duration> d =
        ParseDurationFlag("--duration", flags.duration);
    if (!d.ok()) return d.status();
    options.duration = *d;
  }
  // ghz: -z alone runs for the duration; -n alone sends n requests; both:
  // whichever first.
  const bool total_given =
      flags.total_option != nullptr && flags.total_option->count() > 0;
  options.total = (options.duration > absl::ZeroDuration() && !total_given)
                      ? 0
                      : flags.total;
  absl::StatusOr<absl::Duration> max_duration =
      ParseDurationFlag("--max-duration", flags.max_duration);
  if (!max_duration.ok()) return max_duration.status();
  if (*max_duration == absl::InfiniteDuration() ||
      *max_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--max-duration must be finite and > 0");
  }
  options.max_duration = *max_duration;
  return absl::OkStatus();
}

// The runner's options from the flags; every error is a usage error.
absl::StatusOr<load::LoadOptions> LoadOptionsFrom(const GlobalFlags& global,
                                                  const LoadFlags& flags) {
  load::LoadOptions options;
  options.concurrency = flags.concurrency;
  options.rate = flags.rate;
  options.arrival = flags.arrival == "poisson" ? load::Arrival::kPoisson
                                               : load::Arrival::kConstant;
  options.stream = flags.stream;
  options.streams = flags.connections;
  options.warmup = flags.warmup;
  options.seed = flags.seed;
  if (absl::Status s = SetRunLength(flags, options); !s.ok()) return s;
  absl::StatusOr<absl::Duration> timeout =
      ParseDurationFlag("--timeout", global.timeout);
  if (!timeout.ok()) return timeout.status();
  if (*timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("load needs a finite --timeout");
  }
  options.timeout = *timeout;
  // Every request has had its deadline by then (unary); streams get the same
  // grace.
  options.drain_timeout = *timeout + absl::Seconds(5);
  return options;
}

// `global` with one attempt per request unless --retry-attempts says
// otherwise: a retried request would report the backoff as its latency and
// hide the server's UNAVAILABLE (ghz and perf_analyzer do not retry either).
GlobalFlags WithLoadRetries(GlobalFlags global) {
  if (global.retry_attempts == 0) global.retry_attempts = 1;
  return global;
}

// The report's line on retries.
std::string RetriesOf(const GlobalFlags& global) {
  if (global.retry_attempts <= 1) return "none (each request sent once)";
  return absl::StrCat("up to ", global.retry_attempts,
                      " attempts on UNAVAILABLE (latency includes backoff)");
}

// The report's header: what was run against what.
load::ReportContext ReportContextFor(const GlobalFlags& global,
                                     const LoadFlags& flags,
                                     const load::LoadOptions& options) {
  load::ReportContext context = {
      {"target", global.target},
      {"concurrency", absl::StrCat(flags.concurrency)},
      {"connections", absl::StrCat(flags.connections)},
      {"mode", flags.mode},
      {"transport", flags.stream ? "ScoreStream" : "Score"},
      {"inputs", flags.shared_memory ? "shared memory" : "in the request"},
      {"outputs", flags.shared_outputs ? "shared memory" : "in the reply"},
      {"load", flags.rate > 0 ? absl::StrCat("open loop, ", flags.rate,
                                             " req/s, ", flags.arrival)
                              : "closed loop"},
      {"retries", RetriesOf(WithLoadRetries(global))},
  };
  if (!flags.model.empty()) context["model"] = flags.model;
  if (options.total > 0) context["total"] = absl::StrCat(options.total);
  if (options.duration > absl::ZeroDuration()) {
    context["duration"] = absl::FormatDuration(options.duration);
  }
  return context;
}

// The report to stdout, or to `path` when given.
absl::Status WriteReport(const std::string& report, const std::string& path) {
  if (path.empty()) {
    std::fwrite(report.data(), 1, report.size(), stdout);
    return absl::OkStatus();
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << report;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

CLI::App* AddLoadCommand(CLI::App& app, LoadFlags& flags) {
  CLI::App* cmd =
      app.add_subcommand("load",
                         "Load-test a deployment: closed loop (-c) or open "
                         "loop at a fixed rate (-r, latency from "
                         "each request's intended send time), presets or "
                         "custom shapes, ghz-style report with "
                         "p99.9/p99.99, per-shape breakdown and server timing. "
                         "Exit 1 when the error rate exceeds "
                         "--max-error-rate");
  cmd->add_option("-c,--concurrency", flags.concurrency,
                  "Requests in flight (closed loop); with -r, the cap on "
                  "requests in flight")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  flags.total_option =
      cmd->add_option(
             "-n,--total", flags.total,
             "Requests to send (default 200; with -z only: no count limit)")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
          ->capture_default_str();
  cmd->add_option("-z,--duration", flags.duration,
                  "Send for this long (seconds or e.g. 30s, 2m); stops at -n "
                  "if also given");
  cmd->add_option("-r,--rate", flags.rate,
                  "Open loop: requests per second, sent on schedule whatever "
                  "the latency")
      ->check(checks::NumberAtLeast(0));
  cmd->add_option("--arrival", flags.arrival,
                  "Open-loop arrivals: constant or poisson")
      ->check(CLI::IsMember({"constant", "poisson"}))
      ->capture_default_str();
  cmd->add_option("--connections", flags.connections,
                  "Independent connections (channels); requests and streams "
                  "spread over them")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_flag(
      "--stream", flags.stream,
      "Pipeline requests over ScoreStream (one stream per connection)");
  cmd->add_option("--preset", flags.preset,
                  "decode (B1 H8 Lq1 Lk2048 D64), prefill512, prefill2048, or "
                  "mixed (90/9/1 %)")
      ->check(CLI::IsMember({"decode", "prefill512", "prefill2048", "mixed"}));
  cmd->add_option("--shape", flags.shapes,
                  "Custom request kind B,H,Lq,Lk,D[:weight]; repeatable; with "
                  "--preset, added "
                  "to it");
  cmd->add_option("--mode", flags.mode, "alibi or relative")
      ->check(CLI::IsMember({"alibi", "relative"}))
      ->capture_default_str();
  cmd->add_option("--model", flags.model,
                  "Relative mode: the server's parameter set");
  cmd->add_option("--causal", flags.causal, "true or false")
      ->check(CLI::IsMember({"true", "false"}))
      ->capture_default_str();
  cmd->add_option("--outputs", flags.outputs,
                  "Comma-separated subset of logits,probs,context")
      ->capture_default_str();
  cmd->add_option("--dtype", flags.dtype, "Input dtype F32, F16 or BF16")
      ->check(CLI::IsMember({"F32", "F16", "BF16"}))
      ->capture_default_str();
  cmd->add_option("--output-dtype", flags.output_dtype,
                  "Output dtype (default: the input's)")
      ->check(CLI::IsMember({"F32", "F16", "BF16"}));
  cmd->add_option("--warmup", flags.warmup,
                  "Requests sent (closed loop) before measuring")
      ->check(checks::WholeNumber(0))
      ->capture_default_str();
  cmd->add_option("--format", flags.format, "Report format: text, json or csv")
      ->check(CLI::IsMember({"text", "json", "csv"}))
      ->capture_default_str();
  cmd->add_option("-o,--output", flags.output,
                  "Write the report here instead of stdout");
  cmd->add_option("--max-error-rate", flags.max_error_rate,
                  "Exit 1 when errors / requests exceed this (0..1)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--max-duration", flags.max_duration,
                  "Hard bound on sending (the run also stops at -n / -z)")
      ->capture_default_str();
  cmd->add_option("--seed", flags.seed,
                  "Seed for inputs, kind choice and Poisson arrivals")
      ->capture_default_str();
  CLI::Option* shared_memory = cmd->add_flag(
      "--shared-memory", flags.shared_memory,
      "Inputs from a shared-memory region registered for the run "
      "(a server on this host, with --shm-prefix): requests carry "
      "ranges, not bytes");
  cmd->add_flag("--shared-outputs", flags.shared_outputs,
                "Outputs into that region too, one slot per request in "
                "flight (-c): replies carry ranges, not bytes")
      ->needs(shared_memory);
  return cmd;
}

int RunLoad(const GlobalFlags& global, const LoadFlags& flags) {
  absl::StatusOr<load::WorkloadOptions> workload_options =
      WorkloadOptionsFrom(flags);
  if (!workload_options.ok()) {
    return Fail("load", workload_options.status(), kExitUsage);
  }
  absl::StatusOr<load::Workload> workload =
      load::Workload::Create(*workload_options);
  if (!workload.ok()) return Fail("load", workload.status(), kExitUsage);
  absl::StatusOr<load::LoadOptions> options = LoadOptionsFrom(global, flags);
  if (!options.ok()) return Fail("load", options.status(), kExitUsage);

  absl::StatusOr<std::unique_ptr<client::Client>> client =
      MakeClient(WithLoadRetries(global), flags.connections);
  if (!client.ok()) return Fail("load", client.status(), kExitUsage);
  if (absl::Status s = CheckModel(**client, *workload); !s.ok()) {
    return Fail("load", s, kExitUsage);
  }
  const std::string region_name = absl::StrCat("attnscore-load-", getpid());
  std::optional<client::SharedMemoryRegion> region;
  if (flags.shared_memory) {
    absl::StatusOr<client::SharedMemoryRegion> shared =
        ShareMemory(**client, *workload, region_name,
                    flags.shared_outputs ? flags.concurrency : 0);
    if (!shared.ok()) return Fail("load", shared.status(), kExitFailed);
    region = *std::move(shared);
  }
  absl::StatusOr<load::LoadResult> result =
      load::RunLoad(**client, *workload, *options);
  if (region.has_value()) {
    // After a failed run too. A registration left behind would count against
    // this identity's share of the server's regions: say so.
    if (absl::Status s =
            (*client)->UnregisterSharedMemory(region_name, SetupCall(**client));
        !s.ok()) {
      std::fprintf(stderr, "attnscore load: unregistering region %s: %s\n",
                   region_name.c_str(), s.ToString().c_str());
    }
  }
  if (!result.ok()) return Fail("load", result.status(), kExitFailed);

  const load::ReportFormat format =
      flags.format == "json"  ? load::ReportFormat::kJson
      : flags.format == "csv" ? load::ReportFormat::kCsv
                              : load::ReportFormat::kText;
  const std::string report = load::FormatReport(
      *result, ReportContextFor(global, flags, *options), format);
  if (absl::Status s = WriteReport(report, flags.output); !s.ok()) {
    return Fail("load", s, kExitUsage);
  }
  if (result->error_rate() > flags.max_error_rate) {
    std::fflush(stdout);  // the report first, then the verdict
    std::fprintf(
        stderr,
        "attnscore load: error rate %.4f exceeds --max-error-rate %.4f\n",
        result->error_rate(), flags.max_error_rate);
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace attnscore::cli
