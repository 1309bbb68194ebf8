#include "cdp/agent/agent_state.h"

#include <nlohmann/json.hpp>

#include "cdp/core/atomic_file.h"

namespace cdp::agent {

namespace {
std::string StatePath(const std::string& dir) { return dir + "/agent-state.json"; }
}  // namespace

Result<AgentState> LoadAgentState(const std::string& state_dir) {
  const std::string path = StatePath(state_dir);
  CDP_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", 0) != 1) {
    return Status::Corruption("agent state " + path +
                              " does not parse; move it away to start with a full resync");
  }
  AgentState s;
  try {
    s.volume = j.value("volume", "");
    s.size_bytes = j.value("size_bytes", uint64_t{0});
    s.clean_shutdown = j.value("clean_shutdown", false);
    s.initial_sync_done = j.value("initial_sync_done", false);
    s.sync_cursor = j.value("sync_cursor", uint64_t{0});
    s.skip_zero = j.value("skip_zero", false);  // absent: the safe choice, send zeroes
    s.capture_mode = j.value("capture_mode", "nbd");
    s.resync_pending = j.value("resync_pending", false);
    s.trace_lost_events = j.value("trace_lost_events", uint64_t{0});
    s.boot_id = j.value("boot_id", "");
    s.writer_epoch = j.value("writer_epoch", uint64_t{0});
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption("agent state " + path + ": a field has the wrong type (" + e.what() +
                              "); move it away to start with a full resync");
  }
  return s;
}

Status SaveAgentState(const std::string& state_dir, const AgentState& s) {
  nlohmann::json j = {{"format", 1},
                      {"volume", s.volume},
                      {"size_bytes", s.size_bytes},
                      {"clean_shutdown", s.clean_shutdown},
                      {"initial_sync_done", s.initial_sync_done},
                      {"sync_cursor", s.sync_cursor},
                      {"skip_zero", s.skip_zero},
                      {"capture_mode", s.capture_mode},
                      {"resync_pending", s.resync_pending},
                      {"trace_lost_events", s.trace_lost_events},
                      {"boot_id", s.boot_id},
                      {"writer_epoch", s.writer_epoch}};
  return WriteFileAtomic(StatePath(state_dir), j.dump(2) + "\n");
}

std::string CurrentBootId() {
  auto text = ReadWholeFile("/proc/sys/kernel/random/boot_id");
  if (!text.ok()) return "";
  std::string id = *text;
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  return id;
}

}  // namespace cdp::agent
