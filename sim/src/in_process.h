// Internal entry points shared by the simulator's source files.
#ifndef IDEM_SIM_SRC_IN_PROCESS_H_
#define IDEM_SIM_SRC_IN_PROCESS_H_

#include <string>

#include "absl/status/statusor.h"
#include "idem/sim/simulator.h"

namespace idem::sim::internal {

// The process profile (config.processes > 0).
[[nodiscard]] absl::StatusOr<RunResult> RunProcesses(const SimConfig& config,
                                                     const RunOptions& options);

// A fresh scope per run, so runs sharing a store file never see each other's records.
std::string NewScope(uint64_t seed);

// A new temporary directory under `base` (empty: $TMPDIR or /tmp).
[[nodiscard]] absl::StatusOr<std::string> MakeTempDir(const std::string& base);
// The sqlite: URI of the simulator's temporary store file in `dir` (synchronous=normal).
std::string TemporarySqliteUri(const std::string& dir);

// Removes the directory and the files directly in it.
void RemoveDir(const std::string& dir);

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_IN_PROCESS_H_
