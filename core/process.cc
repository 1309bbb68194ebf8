#include "cdp/core/process.h"

#include <malloc.h>
#include <pthread.h>

#include <csignal>

namespace cdp {

namespace {

std::atomic<bool> g_stop{false};

void OnStopSignal(int) { g_stop = true; }

sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

}  // namespace

void TuneAllocatorForLargeBuffers(int mmap_threshold, int trim_threshold) {
  mallopt(M_MMAP_THRESHOLD, mmap_threshold);
  mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

const std::atomic<bool>* StartDaemon(const std::string& program, LogLevel level) {
  InitLogging(program, level);
  std::signal(SIGTERM, OnStopSignal);
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGPIPE, SIG_IGN);
  TuneAllocatorForLargeBuffers();
  return &g_stop;
}

void BlockStopSignals() {
  const sigset_t signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int WaitForStopSignal() {
  const sigset_t signals = StopSignals();
  int sig = 0;
  sigwait(&signals, &sig);
  return sig;
}

}  // namespace cdp
