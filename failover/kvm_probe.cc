#include "cdp/failover/kvm_probe.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace cdp::failover {

namespace {

// Closes an fd on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

AccelChoice ProbeAccelerator(const std::string& device) {
  Fd kvm{open(device.c_str(), O_RDWR | O_CLOEXEC)};
  if (kvm.fd < 0) return {"tcg", Errno(device)};
  if (ioctl(kvm.fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
    return {"tcg", device + ": unexpected KVM API version"};
  }
  Fd vm{ioctl(kvm.fd, KVM_CREATE_VM, 0)};
  if (vm.fd < 0) return {"tcg", Errno("KVM_CREATE_VM")};

  const size_t mem_size = 0x1000;
  void* mem = mmap(nullptr, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return {"tcg", Errno("mmap")};
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { munmap(p, n); }
  } unmap{mem, mem_size};
  static const unsigned char kCode[] = {0xf4};  // hlt
  std::memcpy(mem, kCode, sizeof(kCode));
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0x1000;
  region.memory_size = mem_size;
  region.userspace_addr = reinterpret_cast<uint64_t>(mem);
  if (ioctl(vm.fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
    return {"tcg", Errno("KVM_SET_USER_MEMORY_REGION")};
  }
  Fd vcpu{ioctl(vm.fd, KVM_CREATE_VCPU, 0)};
  if (vcpu.fd < 0) return {"tcg", Errno("KVM_CREATE_VCPU")};
  const int run_size = ioctl(kvm.fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) return {"tcg", Errno("KVM_GET_VCPU_MMAP_SIZE")};
  void* run_mem = mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.fd, 0);
  if (run_mem == MAP_FAILED) return {"tcg", Errno("mmap kvm_run")};
  Unmap unmap_run{run_mem, static_cast<size_t>(run_size)};
  auto* run = static_cast<kvm_run*>(run_mem);

  kvm_sregs sregs{};
  if (ioctl(vcpu.fd, KVM_GET_SREGS, &sregs) < 0) return {"tcg", Errno("KVM_GET_SREGS")};
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu.fd, KVM_SET_SREGS, &sregs) < 0) return {"tcg", Errno("KVM_SET_SREGS")};
  kvm_regs regs{};
  regs.rip = 0x1000;
  regs.rflags = 0x2;
  if (ioctl(vcpu.fd, KVM_SET_REGS, &regs) < 0) return {"tcg", Errno("KVM_SET_REGS")};
  if (ioctl(vcpu.fd, KVM_RUN, 0) < 0) return {"tcg", Errno("KVM_RUN")};
  if (run->exit_reason != KVM_EXIT_HLT) {
    return {"tcg", "a KVM test guest did not run (exit reason " + std::to_string(run->exit_reason) +
                       " instead of HLT)"};
  }
  return {"kvm", "a KVM test guest ran"};
}

}  // namespace cdp::failover
