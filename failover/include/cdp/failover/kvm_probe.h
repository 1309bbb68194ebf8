// Whether KVM can run a guest here: some hosts have a /dev/kvm whose VMs never run (nested
// virtualization turned off, a sandbox). The probe runs a real two-byte guest (real mode,
// `hlt`) through the KVM API, so "kvm" is chosen only when a guest actually executes.
#pragma once

#include <string>

namespace cdp::failover {

struct AccelChoice {
  std::string accel;   // "kvm" or "tcg"
  std::string reason;  // why: "a KVM guest ran", "/dev/kvm: No such file or directory", ...
};

// Probes /dev/kvm (or `device`, for tests). Never fails: anything that goes wrong means tcg,
// with the reason. Takes a few milliseconds.
AccelChoice ProbeAccelerator(const std::string& device = "/dev/kvm");

}  // namespace cdp::failover
