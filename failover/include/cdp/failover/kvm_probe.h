// Whether KVM can run a guest here, and at a useful speed: some hosts have a /dev/kvm whose VMs
// never run (nested virtualization turned off, a sandbox), and some run them a thousand times
// slower than the CPU (a nested hypervisor that traps every instruction: the Linux kernel's
// decompressor then takes minutes where TCG takes a second). The probe runs a real guest through
// the KVM API: it starts in real mode, enters protected and then long mode itself (GDT, PAE page
// tables, EFER.LME, paging), counts down 4 million loop iterations and reports on an I/O port.
// "kvm" is chosen only when it does all of that within the budget (a few milliseconds on a KVM
// host; TCG itself would need about 50 ms).
#pragma once

#include <chrono>
#include <string>

namespace cdp::failover {

struct AccelChoice {
  std::string accel;   // "kvm" or "tcg"
  std::string reason;  // why: "a KVM test guest ran ...", "/dev/kvm: No such file or directory"
};

// How long the probe's guest may take, from creating the VM to its report.
inline constexpr std::chrono::milliseconds kKvmProbeBudget{1000};

// Probes /dev/kvm (or `device`, for tests). Never fails: anything that goes wrong (including a
// guest that does not finish within `budget`) means tcg, with the reason. The guest runs in a
// child process, which is killed when the budget is spent (a vCPU that does not exit cannot be
// interrupted otherwise). Takes a few milliseconds where KVM works, at most `budget` elsewhere.
AccelChoice ProbeAccelerator(const std::string& device = "/dev/kvm",
                             std::chrono::milliseconds budget = kKvmProbeBudget);

}  // namespace cdp::failover
