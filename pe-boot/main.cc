// pe-agent: the agent inside the semi-booted target VM (started by the PE's /init). Wiring only;
// the work is in cdp::pe::PeAgent.
#include <boost/program_options.hpp>
#include <iostream>

#include "cdp/core/command_line.h"
#include "cdp/core/process.h"
#include "cdp/pe/pe_agent.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  cdp::pe::PeAgentOptions options;
  std::string volumes, engine = "auto";
  std::vector<std::string> disks;
  po::options_description desc(
      "pe-agent: runs inside the target VM's preinstallation environment (PE). Finds the\n"
      "target's disks by serial (serial = volume name), listens for replicators on the\n"
      "replication network, applies their batches with O_DIRECT writes in LSN order, keeps each\n"
      "volume's applied LSN on the metadata disk, and answers status and checksum queries.\n\n"
      "Usage: pe-agent --listen tcp://IP:PORT --volumes NAME:SIZE[,NAME:SIZE...]\n"
      "                [--meta-serial SERIAL | --meta PATH --disk NAME=PATH...]\n\nOptions");
  desc.add_options()("listen", po::value(&options.listen)->required(),
                     "endpoint to serve on, tcp://IP:PORT (the replication NIC's address)")(
      "volumes", po::value(&volumes)->required(),
      "the target's volumes, NAME:SIZE in bytes, comma-separated (cdp.volumes= of the kernel "
      "command line)")("meta-serial", po::value(&options.meta_serial)->default_value("cdp-pe-meta"),
                       "serial of the metadata disk")(
      "meta", po::value(&options.meta_path),
      "metadata area at this path instead of a disk found by serial (host-side runs)")(
      "disk", po::value(&disks),
      "NAME=PATH: volume NAME's disk at PATH instead of the disk with serial NAME (host-side "
      "runs; repeat per volume)")("sys-root", po::value(&options.sys_root)->default_value("/sys"),
                                  "where sysfs is mounted")(
      "dev-root", po::value(&options.dev_root)->default_value("/dev"), "where device nodes are")(
      "console", po::value(&options.console),
      "also write the ready line and fatal errors here (the PE passes /dev/console)")(
      "io-engine", po::value(&engine)->default_value("auto"), "auto|io_uring|libaio")(
      "newroot", po::value(&options.newroot)->default_value("/newroot"),
      "where a takeover mounts the migrated OS's root (host-side runs: a scratch directory)")(
      "takeover-file", po::value(&options.takeover_file)->default_value("/run/cdp-takeover"),
      "the file a takeover writes to tell the PE's /init to switch_root (host-side runs: a "
      "scratch file)")(
      "allow-kexec", po::bool_switch(&options.allow_kexec),
      "a takeover may reboot this machine into the migrated OS's own kernel (kexec); the PE's "
      "/init sets it, host-side runs must not");
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine("pe-agent", argc, argv, &desc, &vm, &level)) {
    return *exit_code;
  }
  auto specs = cdp::pe::ParseVolumeSpecs(volumes, options.meta_serial);
  if (!specs.ok()) return cdp::UsageError("pe-agent", "--volumes: " + specs.status().message());
  options.volumes = *specs;
  for (const auto& d : disks) {
    const size_t eq = d.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == d.size()) {
      return cdp::UsageError("pe-agent", "--disk '" + d + "': expected NAME=PATH");
    }
    options.disk_paths[d.substr(0, eq)] = d.substr(eq + 1);
  }
  auto io = cdp::ParseIoEngine(engine);
  if (!io.ok()) return cdp::UsageError("pe-agent", io.status().message());
  options.io_engine = *io;
  const std::atomic<bool>* stop = cdp::StartDaemon("pe-agent", level);
  cdp::pe::PeAgent agent(options);
  cdp::Status s = agent.Start();
  if (s.ok()) s = agent.Run(stop);
  if (!s.ok()) {
    std::cerr << "pe-agent: " << s.message() << "\n";
    return 1;
  }
  // The PE's /init switch_roots into the migrated OS on this status (docs/pe-image.md §3).
  return agent.handed_over() ? cdp::pe::PeAgent::kTakeoverExitStatus : 0;
}
