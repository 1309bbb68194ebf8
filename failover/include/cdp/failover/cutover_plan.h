// CutoverPlan: what `cdpctl cutover|drill --plan FILE` does, read from a YAML file
// (docs/cutover-plan.md; the lab's plans are deploy/lab/plans/cutover.yaml and drill.yaml).
//
// Every value may use ${VAR} for an environment variable (the lab's plans use ${CDP_LAB_DIR});
// an unset variable is an error naming it. Relative paths are from the plan file's directory.
// ${TARGET_UUID} is no environment variable: it may stand only in health_check.expect, where it
// is kept as written and the engine puts the target config's uuid in its place
// (CutoverPlan::ExpectedReply()).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"
#include "cdp/failover/target_config.h"

namespace cdp::failover {

// A pre-freeze hook of quiesce method agent: run on the source by its agent, no shell.
struct PreFreezeHook {
  std::vector<std::string> run;  // argv
  double timeout_seconds = 10;   // its process group is killed after this
};

struct QuiesceMethod {
  // "qmp-pause": QMP `stop` of the source VM (its block layer drains first);
  // "command":   run `command` (argv) and expect exit 0; `resume_command` undoes it;
  // "agent":     the source's cdp-agent, through the journal-server: `hooks` in order, then
  //              every protected filesystem frozen together within `freeze_budget_seconds`,
  //              held under a lease of `hold_seconds` that the engine renews (docs/cutover.md);
  // "fsfreeze":  an old name, refused (use agent).
  std::string method;
  std::vector<std::string> command;
  std::vector<std::string> resume_command;
  std::vector<PreFreezeHook> hooks;  // agent
  double freeze_budget_seconds = 5;  // agent
  double hold_seconds = 30;          // agent: thawed when not renewed within this
};

struct FenceMethod {
  // "qmp-poweroff": QMP `quit` of the source VM; "qmp-pause": leave it paused;
  // "command": run `command` (e.g. remove the service IP over ssh);
  // "agent": the source's cdp-agent does `action`: "remove-addresses" (`addresses` off its NICs,
  //          read back) or "poweroff" (forced, at once, still frozen).
  std::string method;
  std::vector<std::string> command;
  std::string action;                  // agent
  std::vector<std::string> addresses;  // agent remove-addresses: IPv4[/PREFIX]; default: the
                                       // plan's network addresses
};

struct NicMappingPlan {
  std::string source_mac;   // the source NIC that held the address: configs matching it by MAC
                            // are moved to target_mac at takeover (docs/pe-agent.md §5)
  std::string source_name;  // optional: its interface name on the source ("ens192"), when the
                            // migrated OS's configs cannot tell (several NICs by name, IP drift)
  std::string target_mac;  // the target VM's NIC that takes it
  std::string address;     // ADDR/PREFIX; the same as the source's = IP drift
  std::string gateway;
};

struct HealthCheck {
  std::string host;  // IPv4
  uint16_t port = 0;
  std::string request;  // "" = a TCP connect is enough
  std::string expect;   // the reply line expected ("" = any reply); "${TARGET_UUID}" allowed
  double interval_seconds = 0.2;
  // Run on this host (inside the drill's namespace for a drill) once the service answers; it
  // must exit 0 too, e.g. [env, PGPASSWORD=cdp, psql, -h, 192.0.2.10, -U, cdp, -c, SELECT 1].
  // Empty: none.
  std::vector<std::string> command;
  double command_timeout_seconds = 10;
};

struct Budgets {
  double lag_seconds = 30;    // precheck: the replica may be at most this far behind
  double drain_seconds = 60;  // quiesce -> target applied the final LSN
  double verify_seconds = 120;
  double takeover_seconds = 60;  // promote -> health check passes
  double total_seconds = 300;
};

struct CutoverPlan {
  std::string file;
  std::string name;     // protection group
  std::string journal;  // journal-server endpoint, tcp://HOST:PORT
  std::vector<std::string> volumes;
  std::string root_volume;  // the volume holding the migrated OS's root filesystem
  std::string source_qmp_socket;
  std::vector<std::string> source_devices;  // per volume, for verification: the source's device
                                            // or image path (same order as volumes)
  QuiesceMethod quiesce;
  FenceMethod fence;
  std::string target_config;  // the `cdpctl target` config of the target VM
  TargetConfig target;        // loaded from it
  std::vector<NicMappingPlan> network;
  HealthCheck health;
  Budgets budgets;
  std::string rollback = "resume-source";  // or "none"
  // How the migrated OS starts at promote (docs/pe-agent.md §5): the plan's takeover.boot,
  // "auto" (switch_root on the PE's kernel when the migrated OS has its modules, else kexec),
  // "switch-root" or "kexec" (wire::ParseBootMode); and, for kexec, the kernel command line
  // after root=UUID=... ("" = "ro").
  wire::v1::BootMode takeover_boot = wire::v1::BOOT_MODE_AUTO;
  std::string takeover_kernel_args;
  // Drills only: the isolated namespace the drill VM runs in, and its service network.
  std::string drill_namespace;  // "cdp-drill" unless the plan says otherwise
  // ADDR/PREFIX the drill namespace holds on its copy of the service network (where the health
  // check comes from). Default: the first host address of network[0]'s subnet that no mapping
  // and not health_check.host use ("" when the plan maps no address).
  std::string drill_address;

  // The line (1-based) of each key the engines name in their errors: "journal", "volumes",
  // "volumes[I]", "source.qmp_socket", "source.devices[I]", "target.config", "drill.namespace";
  // absent when the key is not in the file.
  std::map<std::string, int> lines;

  // How the engines' errors name a plan key: "FILE:LINE: 'KEY'" ("FILE: 'KEY'" without a line).
  std::string Where(const std::string& key) const;

  // health.expect with every "${TARGET_UUID}" replaced by target.uuid: the reply line the health
  // check waits for ("" = any reply).
  std::string ExpectedReply() const;
};

// Loads and checks `path`. Every error names the file, the line and the key (an unknown key, a
// missing one, a bad IP, a MAC the target has no NIC for, a volume the target config lacks, a
// root volume not among the volumes, an unset ${VAR}). Touches nothing but the two files.
Result<CutoverPlan> LoadCutoverPlan(const std::string& path);

}  // namespace cdp::failover
