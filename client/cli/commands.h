// The `attnscore` subcommands. Each Add* registers a subcommand and its flags
// on `app` (filling the given flags struct when parsed); each Run* runs it and
// returns the process exit code (common_flags.h).
// Thread safety: main-thread only.
#ifndef ATTNSCORE_CLIENT_CLI_COMMANDS_H_
#define ATTNSCORE_CLIENT_CLI_COMMANDS_H_

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "client/cli/common_flags.h"

namespace attnscore::cli {

// score: q/k/v (+ key_lengths, slopes) from a safetensors file, options from
// flags or the file's __metadata__ (the keys of ../shared/golden/index.json),
// outputs to a safetensors file.
struct ScoreFlags {
  std::string input;
  std::string output;
  std::string outputs;
  std::string mode;
  std::string model;
  std::string causal;
  std::string scale;
  std::string layout;
  std::string key_lengths;
  std::string slopes;
  std::string input_dtype;
  std::string output_dtype;
  std::string request_id;
  bool stream = false;
  bool quiet = false;
};
CLI::App* AddScoreCommand(CLI::App& app, ScoreFlags& flags);
int RunScore(const GlobalFlags& global, const ScoreFlags& flags);

struct HealthFlags {
  std::string service = client::ServiceName();
  std::string wait = "0";
};
CLI::App* AddHealthCommand(CLI::App& app, HealthFlags& flags);
int RunHealth(const GlobalFlags& global, const HealthFlags& flags);

struct InfoFlags {
  std::string format = "text";
};
CLI::App* AddModelsCommand(CLI::App& app, InfoFlags& flags);
int RunModels(const GlobalFlags& global, const InfoFlags& flags);
CLI::App* AddInfoCommand(CLI::App& app, InfoFlags& flags);
int RunInfo(const GlobalFlags& global, const InfoFlags& flags);

struct LoadFlags {
  int concurrency = 50;
  int64_t total = 200;
  std::string duration;
  double rate = 0;
  std::string arrival = "constant";
  int connections = 1;
  bool stream = false;
  std::string preset;
  std::vector<std::string> shapes;
  std::string mode = "alibi";
  std::string model;
  std::string causal = "true";
  std::string outputs = "logits";
  std::string dtype = "F32";
  std::string output_dtype;
  int64_t warmup = 0;
  std::string format = "text";
  std::string output;
  double max_error_rate = 0;
  std::string max_duration = "10m";
  uint64_t seed = 1;
  bool shared_memory = false;           // inputs from a registered region
  bool shared_outputs = false;          // outputs into it too
  CLI::Option* total_option = nullptr;  // was -n given?
};
CLI::App* AddLoadCommand(CLI::App& app, LoadFlags& flags);
int RunLoad(const GlobalFlags& global, const LoadFlags& flags);

}  // namespace attnscore::cli

#endif  // ATTNSCORE_CLIENT_CLI_COMMANDS_H_
