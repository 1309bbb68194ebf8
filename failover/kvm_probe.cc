#include "cdp/failover/kvm_probe.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace cdp::failover {

namespace {

// The guest, loaded at guest-physical 0x1000 (GNU as, `ld -Ttext=0x1000 --oformat binary`):
//   .code16
//   cli; lgdtl gdtr                               # the GDT below
//   mov %cr0,%eax; or $1,%eax; mov %eax,%cr0     # protected mode
//   ljmpl $0x08,$pm32
//   .code32
//   pm32: mov $0x10,%ax; mov %ax,%ds; mov %ax,%ss
//   mov %cr4,%eax; or $0x20,%eax; mov %eax,%cr4  # PAE
//   mov $0x2000,%eax; mov %eax,%cr3              # the page tables the host wrote
//   mov $0xC0000080,%ecx; rdmsr; or $0x100,%eax; wrmsr   # EFER.LME
//   mov %cr0,%eax; or $0x80000000,%eax; mov %eax,%cr0    # paging: long mode
//   ljmp $0x18,$lm64
//   .code64
//   lm64: mov $0x400000,%ecx; 1: dec %ecx; jnz 1b  # 4 Mi iterations: ~2 ms on a real CPU
//   mov $0x4b,%al; out %al,$0xf4; hlt
//   gdt: null, 32-bit code (0x08), data (0x10), 64-bit code (0x18); gdtr: limit, base
constexpr unsigned char kGuest[] = {
    0xfa, 0x66, 0x0f, 0x01, 0x16, 0x80, 0x10, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f,
    0x22, 0xc0, 0x66, 0xea, 0x19, 0x10, 0x00, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e,
    0xd8, 0x8e, 0xd0, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0x20,
    0x00, 0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01,
    0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0,
    0xea, 0x52, 0x10, 0x00, 0x00, 0x18, 0x00, 0xb9, 0x00, 0x00, 0x40, 0x00, 0xff, 0xc9, 0x75,
    0xfc, 0xb0, 0x4b, 0xe6, 0xf4, 0xf4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x1f, 0x00, 0x60, 0x10, 0x00, 0x00};
constexpr uint16_t kReportPort = 0xf4;
constexpr uint8_t kReportValue = 0x4b;
constexpr size_t kGuestMemory = 0x10000;  // code at 0x1000, PML4 0x2000, PDPT 0x3000, PD 0x4000

// What the child reports through the pipe: one byte, then errno for the failed steps.
enum Outcome : uint8_t {
  kRan = 0,
  kOpenFailed,
  kApiVersion,
  kCreateVm,
  kMmap,
  kSetMemory,
  kSetTss,
  kCreateVcpu,
  kGetCpuid,
  kSetCpuid,
  kVcpuMmap,
  kRegisters,
  kRun,
  kWrongExit,
};

const char* OutcomeStep(Outcome o) {
  switch (o) {
    case kRan:
      return "ran";
    case kOpenFailed:
      return "open";
    case kApiVersion:
      return "unexpected KVM API version";
    case kCreateVm:
      return "KVM_CREATE_VM";
    case kMmap:
      return "mmap";
    case kSetMemory:
      return "KVM_SET_USER_MEMORY_REGION";
    case kSetTss:
      return "KVM_SET_TSS_ADDR";
    case kCreateVcpu:
      return "KVM_CREATE_VCPU";
    case kGetCpuid:
      return "KVM_GET_SUPPORTED_CPUID";
    case kSetCpuid:
      return "KVM_SET_CPUID2";
    case kVcpuMmap:
      return "mmap kvm_run";
    case kRegisters:
      return "KVM_SET_SREGS/KVM_SET_REGS";
    case kRun:
      return "KVM_RUN";
    case kWrongExit:
      return "the test guest stopped";
  }
  return "?";
}

// Runs the guest; only system calls (this runs in a child forked from a process that may have
// threads). Returns the outcome; *detail is errno, or the exit reason for kWrongExit.
Outcome RunGuest(const char* device, int* detail) {
  auto fail = [&](Outcome o) {
    *detail = errno;
    return o;
  };
  const int kvm = open(device, O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail(kOpenFailed);
  if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return fail(kApiVersion);
  const int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return fail(kCreateVm);
  void* mem_ptr =
      mmap(nullptr, kGuestMemory, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem_ptr == MAP_FAILED) return fail(kMmap);
  auto* mem = static_cast<unsigned char*>(mem_ptr);
  std::memcpy(mem + 0x1000, kGuest, sizeof(kGuest));
  auto entry = [&](size_t table, uint64_t value) {
    std::memcpy(mem + table, &value, sizeof(value));
  };
  entry(0x2000, 0x3000 | 3);  // PML4[0] -> PDPT, present and writable
  entry(0x3000, 0x4000 | 3);  // PDPT[0] -> PD
  entry(0x4000, 0x83);        // PD[0]: the first 2 MiB, identity-mapped
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = kGuestMemory;
  region.userspace_addr = reinterpret_cast<uint64_t>(mem);
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return fail(kSetMemory);
  // Where Intel's real mode without unrestricted guest keeps its TSS (three pages), as QEMU
  // puts it: away from the guest's memory, which KVM would otherwise use from address 0.
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) return fail(kSetTss);
  const int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) return fail(kCreateVcpu);
  // The guest's CPUID must say long mode, or writing EFER.LME faults.
  // <linux/kvm.h>'s struct kvm_cpuid2 ends in a flexible array that C++ sizes differently from
  // C (12 bytes, not 8), and the ioctl numbers encode that size: these are the kernel's (C's).
  struct CpuidHeader {
    uint32_t nent;
    uint32_t padding;
  };
  constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
  constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
  constexpr uint32_t kCpuidEntries = 256;  // KVM's maximum; a CPU lists about 60
  struct {
    CpuidHeader header;
    kvm_cpuid_entry2 entries[kCpuidEntries];
  } cpuid{};
  cpuid.header.nent = kCpuidEntries;
  if (ioctl(kvm, kGetSupportedCpuid, &cpuid) < 0) return fail(kGetCpuid);
  if (ioctl(vcpu, kSetCpuid2, &cpuid) < 0) return fail(kSetCpuid);
  const int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) return fail(kVcpuMmap);
  void* run_mem = mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run_mem == MAP_FAILED) return fail(kVcpuMmap);
  auto* run = static_cast<kvm_run*>(run_mem);
  kvm_sregs sregs{};
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail(kRegisters);
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail(kRegisters);
  kvm_regs regs{};
  regs.rip = 0x1000;
  regs.rflags = 0x2;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return fail(kRegisters);
  if (ioctl(vcpu, KVM_RUN, 0) < 0) return fail(kRun);
  *detail = static_cast<int>(run->exit_reason);
  if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT ||
      run->io.port != kReportPort || run->io.size != 1) {
    return kWrongExit;
  }
  if (*(reinterpret_cast<const unsigned char*>(run) + run->io.data_offset) != kReportValue) {
    return kWrongExit;
  }
  *detail = 0;
  return kRan;
}

}  // namespace

AccelChoice ProbeAccelerator(const std::string& device, std::chrono::milliseconds budget) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return {"tcg", std::string("the KVM probe could not make a pipe: ") + std::strerror(errno)};
  }
  const pid_t child = fork();
  if (child < 0) {
    const int e = errno;
    close(fds[0]);
    close(fds[1]);
    return {"tcg", std::string("the KVM probe could not fork: ") + std::strerror(e)};
  }
  if (child == 0) {
    close(fds[0]);
    int detail = 0;
    const Outcome o = RunGuest(device.c_str(), &detail);
    unsigned char out[1 + sizeof(detail)];
    out[0] = o;
    std::memcpy(out + 1, &detail, sizeof(detail));
    (void)!write(fds[1], out, sizeof(out));
    _exit(0);
  }
  close(fds[1]);
  unsigned char in[1 + sizeof(int)];
  size_t got = 0;
  bool late = false;
  while (got < sizeof(in)) {
    const auto left =
        budget - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    if (left.count() <= 0) {
      late = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      late = r == 0;
      break;
    }
    const ssize_t n = read(fds[0], in + got, sizeof(in) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  close(fds[0]);
  if (got < sizeof(in)) kill(child, SIGKILL);
  while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (late) {
    return {"tcg",
            "a KVM test guest did not finish 4 million loop iterations in long mode within " +
                std::to_string(budget.count()) +
                " ms (KVM runs guests far slower than the CPU here, e.g. nested without "
                "hardware support)"};
  }
  if (got < sizeof(in)) return {"tcg", "the KVM probe's child died without an answer"};
  const auto outcome = static_cast<Outcome>(in[0]);
  int detail = 0;
  std::memcpy(&detail, in + 1, sizeof(detail));
  switch (outcome) {
    case kRan: {
      char text[96];
      snprintf(text, sizeof(text), "a KVM test guest ran in long mode in %.0f ms", ms);
      return {"kvm", text};
    }
    case kOpenFailed:
      return {"tcg", device + ": " + std::strerror(detail)};
    case kApiVersion:
      return {"tcg", device + ": unexpected KVM API version"};
    case kWrongExit:
      return {"tcg", "a KVM test guest did not run (exit reason " + std::to_string(detail) +
                         " instead of its report on port 0xf4)"};
    default:
      return {"tcg", std::string(OutcomeStep(outcome)) + ": " + std::strerror(detail)};
  }
}

}  // namespace cdp::failover
