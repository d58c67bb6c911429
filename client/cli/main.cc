// attnscore: command line client for the attnscore service: score a safetensors
// file, check health, list models, show server info, and load-test a
// deployment. `attnscore --help` and `attnscore <command> --help` document
// every flag and its ATTNSCORE_* environment variable.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "client/cli/commands.h"
#include "client/cli/common_flags.h"
#include "client/client.h"

namespace attnscore::cli {
namespace {

int Main(int argc, char** argv) {
  CLI::App app{
      "attnscore: client for the attnscore attention-scoring service.\n"
      "Exit codes: 0 success, 1 the operation failed, 2 usage or set-up "
      "error."};
  // Global flags may also follow the subcommand: `attnscore health --target
  // host:port`.
  app.fallthrough();
  GlobalFlags global;
  AddGlobalFlags(app, global);
  ScoreFlags score;
  HealthFlags health;
  InfoFlags models;
  InfoFlags info;
  LoadFlags load;
  CLI::App* score_cmd = AddScoreCommand(app, score);
  CLI::App* health_cmd = AddHealthCommand(app, health);
  CLI::App* models_cmd = AddModelsCommand(app, models);
  CLI::App* info_cmd = AddInfoCommand(app, info);
  CLI::App* load_cmd = AddLoadCommand(app, load);
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // --help and friends are successes; every real parse error is a usage
    // error.
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (score_cmd->parsed()) return RunScore(global, score);
  if (health_cmd->parsed()) return RunHealth(global, health);
  if (models_cmd->parsed()) return RunModels(global, models);
  if (info_cmd->parsed()) return RunInfo(global, info);
  if (load_cmd->parsed()) return RunLoad(global, load);
  return kExitUsage;
}

}  // namespace
}  // namespace attnscore::cli

int main(int argc, char** argv) {
  // Before any gRPC call: large responses are read in bounded pieces.
  attnscore::client::PreferBoundedSocketReads();
  // Nothing below throws on purpose (errors are statuses and exit codes);
  // this only turns an unexpected exception (e.g. std::bad_alloc) into a
  // message and a failure exit instead of std::terminate.
  try {
    return attnscore::cli::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnscore: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "attnscore: unknown exception\n");
  }
  return attnscore::cli::kExitFailed;
}
