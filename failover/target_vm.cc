#include "cdp/failover/target_vm.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cdp/core/atomic_file.h"
#include "cdp/core/host_command.h"
#include "cdp/core/qmp_client.h"
#include "cdp/core/record.h"
#include "cdp/core/units.h"
#include "cdp/failover/target_agent.h"
#include "cdp/failover/target_snapshot.h"
#include "cdp/pe/disk_finder.h"
#include "cdp/pe/pe_client.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace fs = std::filesystem;
namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

namespace {

// The cursors (PeMetadata's first 4 MiB) and the kept area for the prepared initramfs images
// (docs/pe-agent.md §3). Sparse: a new disk takes a few hundred KiB.
constexpr uint64_t kMetadataDiskBytes = 256 << 20;

std::string FormatFor(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  return (ext == ".img" || ext == ".raw") ? "raw" : "qcow2";
}

// A field of a JSON object this code reads back (its own state file, qemu-img's output), or
// `fallback` when it is missing or of another type: a damaged file never throws.
template <typename T>
T FieldOr(const nlohmann::json& j, const char* key, T fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  try {
    return it->template get<T>();
  } catch (const nlohmann::json::exception&) {
    return fallback;
  }
}

}  // namespace

Result<ImageInfo> InspectImage(const std::string& path) {
  std::vector<std::string> argv = {"qemu-img", "info", "--output=json", "--force-share", path};
  CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kQemuImgInfoMs));
  if (r.exit_code != 0) {
    return Status::FailedPrecondition("disk " + path + " cannot be inspected: " + r.output);
  }
  auto j = nlohmann::json::parse(r.output, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Internal("qemu-img info " + path + " printed no JSON: " + r.output);
  }
  return ImageInfo{FieldOr<std::string>(j, "format", ""),
                   FieldOr<uint64_t>(j, "virtual-size", 0)};
}

namespace {

Status CreateImage(const std::string& path, const std::string& format, uint64_t size,
                   std::ostream& progress) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::vector<std::string> argv = {"qemu-img",          "create", "-q", "-f", format, path,
                                   std::to_string(size)};
  CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kHostCommandMs));
  if (r.exit_code != 0) {
    return Status::IOError("creating disk " + path + " failed: " + CommandLine(argv) + ": " +
                           r.output);
  }
  progress << "created " << format << " disk " << path << " (" << size << " bytes)\n";
  return Status::Ok();
}

bool ProcessAlive(int pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

nlohmann::json ReadStateFile(const std::string& path) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return nlohmann::json::object();
  auto j = nlohmann::json::parse(*text, nullptr, false);
  return j.is_object() ? j : nlohmann::json::object();
}

}  // namespace

// The TCG translation cache of the target VM, MiB (QemuArgs).
constexpr int kTcgTbSizeMib = 64;

std::string TargetDriveId(size_t index) { return "disk" + std::to_string(index); }

std::vector<std::string> TargetVm::QemuArgs(const std::string& accel) const {
  const TargetConfig& c = config_;
  std::string append = "console=ttyS0 panic=-1 quiet cdp.listen=" + std::to_string(c.guest_port) +
                       " cdp.repl_mac=" + c.replication_nic.mac +
                       " cdp.volumes=" + c.VolumeSpecs() +
                       " cdp.meta=" + std::string(pe::kDefaultMetaSerial);
  if (!c.kernel_args.empty()) append += " " + c.kernel_args;
  // TCG: a small translation cache. A guest that ran much code (the PE's chroot rebuilding an
  // initramfs) leaves its pages write-protected for as long as their translations live, and
  // every byte the kernel then writes into such a page (zeroing it for the page cache) takes
  // QEMU's slow path: with the default 1 GiB cache a takeover's 20 MB of writes took 80 s and
  // soft lockups. A small cache is flushed often, and a flush unprotects every page.
  const std::string accel_arg =
      accel == "tcg" ? "tcg,tb-size=" + std::to_string(kTcgTbSizeMib) : accel;
  std::vector<std::string> a = {
      c.qemu, "-name", c.name, "-uuid", c.uuid, "-machine", "q35", "-accel", accel_arg, "-cpu",
      accel == "kvm" ? "host" : "max", "-m", std::to_string(c.memory_mib), "-smp",
      std::to_string(c.cpus), "-nodefaults", "-no-user-config", "-display", "none", "-chardev",
      "file,id=console,append=on,path=" + c.console_log(), "-serial", "chardev:console", "-qmp",
      "unix:" + c.qmp_socket + ",server=on,wait=off", "-pidfile", c.pid_file(), "-daemonize",
      "-no-reboot", "-kernel", c.kernel, "-initrd", c.initrd, "-append", append,
      // The replication NIC: user networking, restricted (the guest reaches nothing), with the
      // host's replication endpoint forwarded to the pe-agent.
      "-netdev",
      "user,id=repl,restrict=on,hostfwd=tcp:" + c.replication_host + ":" +
          std::to_string(c.replication_port) + "-:" + std::to_string(c.guest_port),
      "-device", "virtio-net-pci,netdev=repl,mac=" + c.replication_nic.mac};
  if (c.service_nic.mode == "user") {
    a.insert(a.end(), {"-netdev", "user,id=svc,restrict=on"});
  } else if (c.service_nic.mode == "tap") {
    a.insert(a.end(),
             {"-netdev", "tap,id=svc,script=no,downscript=no,ifname=" + c.service_nic.tap});
  }
  if (c.service_nic.mode != "none") {
    a.insert(a.end(), {"-device", "virtio-net-pci,netdev=svc,mac=" + c.service_nic.mac});
  }
  int i = 0;
  for (const auto& d : c.disks) {
    const std::string id = TargetDriveId(i++);
    a.insert(a.end(), {"-drive",
                       "file=" + d.path + ",if=none,id=" + id + ",format=" + FormatFor(d.path) +
                           ",cache=writeback,aio=threads,discard=unmap",
                       "-device", "virtio-blk-pci,drive=" + id + ",serial=" + d.volume});
  }
  a.insert(a.end(),
           {"-drive",
            "file=" + c.metadata_disk + ",if=none,id=" + std::string(kTargetMetaDriveId) + ",format=" + FormatFor(c.metadata_disk) +
                ",cache=writeback,aio=threads",
            "-device",
            "virtio-blk-pci,drive=" + std::string(kTargetMetaDriveId) +
                ",serial=" + std::string(pe::kDefaultMetaSerial)});
  return a;
}

Status TargetVm::PrepareDisks(std::ostream& progress) {
  const TargetConfig& c = config_;
  for (const auto& [key, path] : {std::pair{"pe.kernel", c.kernel}, {"pe.initrd", c.initrd}}) {
    if (!fs::is_regular_file(path)) {
      return Status::NotFound(c.file + ": " + key + " " + path +
                              " does not exist; build the PE image first: "
                              "pe-boot/build-pe-image " +
                              fs::path(path).parent_path().string());
    }
  }
  std::vector<const TargetDisk*> missing;
  for (const auto& d : c.disks) {
    if (!fs::exists(d.path)) {
      missing.push_back(&d);
      continue;
    }
    CDP_ASSIGN_OR_RETURN(ImageInfo info, InspectImage(d.path));
    if (info.format != "qcow2" && info.format != "raw") {
      return Status::FailedPrecondition("disk " + d.path + " (volume " + d.volume + ") is " +
                                        info.format + "; only qcow2 or raw can be attached");
    }
    if (info.format != FormatFor(d.path)) {
      return Status::FailedPrecondition("disk " + d.path + " (volume " + d.volume + ") is " +
                                        info.format + " but its name says " + FormatFor(d.path) +
                                        "; rename it (.qcow2, .img, .raw)");
    }
    if (info.virtual_size < d.size) {
      return Status::FailedPrecondition("disk " + d.path + " (volume " + d.volume + ") has " +
                                        std::to_string(info.virtual_size) +
                                        " bytes but the volume has " + std::to_string(d.size) +
                                        "; nothing was started: grow it (qemu-img resize) or " +
                                        "remove it so a new one is created");
    }
  }
  const bool meta_exists = fs::exists(c.metadata_disk);
  if (!missing.empty() && meta_exists) {
    return Status::FailedPrecondition(
        "disk " + missing.front()->path + " (volume " + missing.front()->volume +
        ") is missing but the metadata disk " + c.metadata_disk +
        " exists and may say that volume is already replicated; remove the metadata disk too "
        "(the volume is then replicated from LSN 0), or restore the disk");
  }
  for (const TargetDisk* d : missing) {
    CDP_RETURN_IF_ERROR(CreateImage(d->path, FormatFor(d->path), d->size, progress));
  }
  if (!meta_exists) {
    return CreateImage(c.metadata_disk, FormatFor(c.metadata_disk), kMetadataDiskBytes, progress);
  }
  return Status::Ok();
}

Status TargetVm::GrowMetadataDisk(std::ostream& progress) {
  const TargetConfig& c = config_;
  // A metadata disk made before it had the kept area (4 MiB) grows to hold it; nothing in it
  // moves (the area starts past the cursors).
  CDP_ASSIGN_OR_RETURN(ImageInfo meta, InspectImage(c.metadata_disk));
  if (meta.virtual_size < kMetadataDiskBytes) {
    std::vector<std::string> argv = {"qemu-img",
                                     "resize",
                                     "-q",
                                     "-f",
                                     meta.format,
                                     c.metadata_disk,
                                     std::to_string(kMetadataDiskBytes)};
    CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kHostCommandMs));
    if (r.exit_code != 0) {
      return Status::IOError("growing metadata disk " + c.metadata_disk +
                             " failed: " + CommandLine(argv) + ": " + r.output);
    }
    progress << "grew metadata disk " << c.metadata_disk << " from " << meta.virtual_size << " to "
             << kMetadataDiskBytes << " bytes (room to keep the prepared initramfs images)\n";
  }
  return Status::Ok();
}

double TargetVm::RecordedPeBootSeconds() const {
  return FieldOr<double>(ReadStateFile(config_.state_file()), "pe_boot_seconds", 0.0);
}

int TargetVm::RunningPid() const {
  auto text = ReadWholeFile(config_.pid_file());
  if (!text.ok()) return 0;
  int pid = 0;
  try {
    pid = std::stoi(*text);
  } catch (...) {
    return 0;
  }
  if (!ProcessAlive(pid)) return 0;
  // The pid file may be stale and the pid reused: it must be a QEMU with our QMP socket.
  auto cmdline = ReadWholeFile("/proc/" + std::to_string(pid) + "/cmdline");
  if (cmdline.ok() && cmdline->find(config_.qmp_socket) == std::string::npos) return 0;
  return pid;
}

std::string TargetVm::ConsoleTail(size_t lines) const {
  std::ifstream in(config_.console_log());
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string out;
  for (const auto& l : tail) out += "  | " + l + "\n";
  return out;
}

Status TargetVm::Start(std::ostream& progress) {
  const TargetConfig& c = config_;
  const auto t0 = Clock::now();
  const int already = RunningPid();
  std::string accel;
  AccelChoice choice;
  if (already == 0) {
    std::error_code ec;
    for (const auto& dir : {fs::path(c.state_dir), fs::path(c.qmp_socket).parent_path()}) {
      fs::create_directories(dir, ec);
      if (ec) return Status::IOError("cannot create " + dir.string() + ": " + ec.message());
    }
    CDP_RETURN_IF_ERROR(PrepareDisks(progress));
    // A drill or export-boot killed while the VM ran left deltas holding its newest writes:
    // commit them into the disks before booting from them.
    CDP_ASSIGN_OR_RETURN(std::string own, PutTargetOnOwnFiles(c));
    if (!own.empty()) progress << "target " << c.name << ": " << own << "\n";
    if (fs::exists(c.qmp_socket)) {
      // A socket left by a QEMU that died: nothing listens (RunningPid found no process).
      auto probe = QmpClient::Connect(c.qmp_socket, kQmpLeftoverProbeMs);
      if (probe.ok()) {
        return Status::FailedPrecondition("a QEMU already serves " + c.qmp_socket +
                                          " but not with pid file " + c.pid_file() +
                                          "; stop it (or use another qmp_socket)");
      }
      if (probe.status().code() == StatusCode::kProtocolMismatch) return probe.status();
      fs::remove(c.qmp_socket, ec);
    }
    // Only now that no QEMU uses the disks and every delta is committed.
    CDP_RETURN_IF_ERROR(GrowMetadataDisk(progress));
    fs::remove(c.pid_file(), ec);
    choice = c.accel == "tcg" ? AccelChoice{"tcg", "accel: tcg in the config"} : ProbeAccelerator();
    if (c.accel == "kvm" && choice.accel != "kvm") {
      return Status::FailedPrecondition(
          c.file + ": accel is kvm but KVM cannot run a guest here, or not at a useful speed (" +
          choice.reason + "); use accel: auto or tcg");
    }
    accel = choice.accel;
    progress << "target " << c.name << ": booting the PE (" << accel << ": " << choice.reason
             << ")\n";
    std::vector<std::string> argv = QemuArgs(accel);
    CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kHostCommandMs));
    if (r.exit_code != 0 && accel == "kvm" && c.accel == "auto") {
      // The probe's bare guest ran, but QEMU's did not: some nested hosts refuse what a full CPU
      // model sets up (e.g. "failed to set MSR 0x10a"). Emulate rather than fail.
      std::string why = r.output;
      while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
      progress << "target " << c.name << ": QEMU could not start under KVM (" << why
               << "); booting under TCG instead\n";
      choice = AccelChoice{"tcg", "QEMU failed under KVM although the probe's guest ran: " + why};
      accel = choice.accel;
      fs::remove(c.pid_file(), ec);
      fs::remove(c.qmp_socket, ec);
      argv = QemuArgs(accel);
      CDP_ASSIGN_OR_RETURN(r, RunHostCommand(argv, kHostCommandMs));
    }
    if (r.exit_code != 0) {
      return Status::FailedPrecondition("qemu-system-x86_64 refused to start the target: " +
                                        r.output + "(command: " + CommandLine(argv) + ")");
    }
  } else {
    const nlohmann::json state = ReadStateFile(c.state_file());
    accel = FieldOr<std::string>(state, "accel", "");
    progress << "target " << c.name << ": already running (pid " << already << ")\n";
  }

  // Wait for the pe-agent through the forwarded replication endpoint.
  const auto deadline = t0 + SecondsToMs(c.ready_timeout_seconds);
  std::string last_error = "no answer yet";
  v1::PeStatusReply ready;
  while (true) {
    const int pid = RunningPid();
    if (pid == 0) {
      return Status::Aborted("QEMU exited while the PE was booting; last console lines (" +
                             c.console_log() + "):\n" + ConsoleTail(20));
    }
    auto client =
        pe::PeClient::Connect(c.replication_endpoint, v1::ROLE_CONTROL, "", 0, kPeProbeConnectMs);
    if (client.ok()) {
      auto st = (*client)->Status(kPeProbeCallMs);
      if (st.ok() && st->pe_state() == v1::PE_STATE_READY) {
        ready = *st;
        break;
      }
      if (st.ok() && st->pe_state() == v1::PE_STATE_ERROR) {
        Status stop = Stop(progress);
        return Status::FailedPrecondition(
            "target " + c.name + ": the PE refused its disks: " + st->error() +
            " (the VM was stopped" + (stop.ok() ? "" : " — stop failed: " + stop.message()) +
            "; console log " + c.console_log() + ")");
      }
      if (!st.ok()) last_error = st.status().message();
    } else {
      last_error = client.status().message();
    }
    if (Clock::now() > deadline) {
      const std::string tail = ConsoleTail(20);
      (void)Stop(progress);
      return Status::TimedOut("target " + c.name + ": the pe-agent was not ready within " +
                              FormatFixed(c.ready_timeout_seconds, 0) + " s (" + last_error +
                              "); the VM was stopped. Last console lines (" + c.console_log() +
                              "):\n" + tail);
    }
    std::this_thread::sleep_for(kBootPollInterval);
  }
  const double boot_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (already == 0) {
    nlohmann::json state = {{"name", c.name},
                            {"pid", RunningPid()},
                            {"accel", accel},
                            {"accel_reason", choice.reason},
                            {"started_at_ns", NowNanos()},
                            {"pe_boot_seconds", boot_seconds},
                            {"pe_kernel_to_ready_seconds", ready.ready_seconds()}};
    CDP_RETURN_IF_ERROR(WriteFileAtomic(c.state_file(), state.dump(2) + "\n"));
  }
  progress << "target " << c.name << ": pe-ready";
  if (already == 0) progress << " in " << FormatFixed(boot_seconds, 1) << " s";
  progress << " (" << accel << ", kernel " << ready.kernel_release() << "); pe-agent at "
           << c.replication_endpoint << "; volumes:";
  for (const auto& v : ready.volumes()) {
    progress << " " << v.name() << "@" << v.applied_lsn();
  }
  progress << "\n";
  return Status::Ok();
}

Status TargetVm::Stop(std::ostream& progress, double timeout_s) {
  const TargetConfig& c = config_;
  const int pid = RunningPid();
  auto qmp = QmpClient::Connect(c.qmp_socket, kQmpStopConnectMs);
  if (!qmp.ok()) {
    if (qmp.status().code() == StatusCode::kProtocolMismatch) return qmp.status();
    if (pid == 0) {
      progress << "target " << c.name << " is not running\n";
      std::error_code ec;
      fs::remove(c.pid_file(), ec);
      return Status::Ok();
    }
  } else {
    auto r = (*qmp)->Execute("quit", nullptr, kQmpQuitMs);
    if (!r.ok()) progress << "target " << c.name << ": quit: " << r.status().message() << "\n";
  }
  const auto deadline = Clock::now() + SecondsToMs(timeout_s);
  while (pid != 0 && ProcessAlive(pid) && Clock::now() < deadline) {
    std::this_thread::sleep_for(kPollInterval);
  }
  if (pid != 0 && ProcessAlive(pid)) {
    progress << "target " << c.name << ": QEMU (pid " << pid << ") did not quit within "
             << FormatFixed(timeout_s, 0) << " s; killing it\n";
    kill(pid, SIGKILL);
    for (int i = 0; i < kKillWaitPolls && ProcessAlive(pid); ++i) {
      std::this_thread::sleep_for(kPollInterval);
    }
  }
  std::error_code ec;
  fs::remove(c.pid_file(), ec);
  progress << "target " << c.name << " stopped\n";
  return Status::Ok();
}

std::string TargetStateName(TargetState state) {
  switch (state) {
    case TargetState::kStopped:
      return "stopped";
    case TargetState::kBooting:
      return "booting";
    case TargetState::kPeReady:
      return wire::PeStateName(v1::PE_STATE_READY);
    case TargetState::kPeError:
      return wire::PeStateName(v1::PE_STATE_ERROR);
  }
  return "unknown";
}

Result<TargetStatus> TargetVm::GetStatus() {
  const TargetConfig& c = config_;
  TargetStatus s;
  s.pid = RunningPid();
  const nlohmann::json state = ReadStateFile(c.state_file());
  if (fs::exists(c.qmp_socket)) {
    auto qmp = QmpClient::Connect(c.qmp_socket, kQmpProbeMs);
    if (!qmp.ok() && qmp.status().code() == StatusCode::kProtocolMismatch) return qmp.status();
    if (qmp.ok()) {
      auto r = (*qmp)->QueryStatus(kQmpProbeMs);
      // Something that answers but not as QEMU does: its state is unknown, not "stopped".
      if (!r.ok() && r.status().code() == StatusCode::kProtocolMismatch) return r.status();
      if (r.ok()) s.vm_status = r->status;
    }
  }
  if (s.pid == 0 && s.vm_status.empty()) {
    s.state = TargetState::kStopped;
    return s;
  }
  s.accel = FieldOr<std::string>(state, "accel", "");
  s.pe_boot_seconds = FieldOr<double>(state, "pe_boot_seconds", 0.0);
  auto client = pe::PeClient::Connect(c.replication_endpoint, v1::ROLE_CONTROL, "", 0,
                                      kPeStatusProbeConnectMs);
  if (!client.ok()) {
    s.state = TargetState::kBooting;
    s.error = client.status().message();
    return s;
  }
  auto st = (*client)->Status(kPeProbeCallMs);
  if (!st.ok()) {
    s.state = TargetState::kBooting;
    s.error = st.status().message();
    return s;
  }
  s.state = st->pe_state() == v1::PE_STATE_READY ? TargetState::kPeReady : TargetState::kPeError;
  s.error = st->error();
  if (st->pe_state() != v1::PE_STATE_READY && st->pe_state() != v1::PE_STATE_ERROR) {
    s.error = "the pe-agent reports state " + wire::PeStateName(st->pe_state()) +
              " (not a pe-agent of this build?) " + s.error;
  }
  s.kernel_release = st->kernel_release();
  s.pe_kernel_to_ready_seconds = st->ready_seconds();
  for (const auto& v : st->volumes()) s.volumes.push_back(v);
  return s;
}

Result<std::vector<RegionChecksum>> TargetVm::Checksums(const std::string& volume, uint64_t offset,
                                                        uint64_t length, uint64_t chunk,
                                                        uint64_t* applied_lsn) {
  return MakeTargetAgent(config_, "")->Checksums(volume, offset, length, chunk, applied_lsn);
}

std::string TargetStatusJson(const TargetStatus& s, const TargetConfig& c) {
  nlohmann::json volumes = nlohmann::json::array();
  for (const auto& v : s.volumes) {
    volumes.push_back({{"name", v.name()},
                       {"device", v.device()},
                       {"size_bytes", v.size_bytes()},
                       {"applied_lsn", v.applied_lsn()},
                       {"boot_applied_lsn", v.boot_applied_lsn()},
                       {"applied_bytes", v.applied_bytes()},
                       {"applied_records", v.applied_records()},
                       {"batches", v.batches()},
                       {"verify_seconds", v.verify_seconds()},
                       {"write_seconds", v.write_seconds()},
                       {"flush_seconds", v.flush_seconds()},
                       {"cursor_seconds", v.cursor_seconds()}});
  }
  nlohmann::json j = {{"name", c.name},
                      {"state", TargetStateName(s.state)},
                      {"vm_status", s.vm_status},
                      {"pid", s.pid},
                      {"accel", s.accel},
                      {"pe_boot_seconds", s.pe_boot_seconds},
                      {"pe_kernel_to_ready_seconds", s.pe_kernel_to_ready_seconds},
                      {"kernel_release", s.kernel_release},
                      {"pe_kernel", c.kernel},
                      {"pe_override", c.pe_override},
                      {"error", s.error},
                      {"replication_endpoint", c.replication_endpoint},
                      {"qmp_socket", c.qmp_socket},
                      {"console_log", c.console_log()},
                      {"volumes", volumes}};
  return j.dump();
}

std::string TargetStatusText(const TargetStatus& s, const TargetConfig& c) {
  std::ostringstream o;
  o << "target " << c.name << ": " << TargetStateName(s.state);
  if (!s.vm_status.empty())
    o << " (VM " << s.vm_status << ", pid " << s.pid << ", " << s.accel << ")";
  o << "\n";
  if (s.pe_boot_seconds > 0) o << "  PE boot: " << FormatFixed(s.pe_boot_seconds, 1) << " s\n";
  if (!c.pe_override.empty()) {
    o << "  PE: " << c.kernel << " (kernel " << c.pe_override_kernel << ", built by follow-boot; "
      << c.pe_override << ")\n";
  }
  if (!s.error.empty()) o << "  " << s.error << "\n";
  for (const auto& v : s.volumes) {
    o << "  volume " << v.name() << " on " << v.device() << ": applied LSN " << v.applied_lsn()
      << " (" << v.applied_bytes() << " bytes applied since the PE booted)\n";
  }
  o << "  pe-agent " << c.replication_endpoint << ", QMP " << c.qmp_socket << ", console "
    << c.console_log() << "\n";
  return o.str();
}

}  // namespace cdp::failover
