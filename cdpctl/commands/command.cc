#include "command.h"

#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <thread>

#include "cdp/core/units.h"

namespace cdp::ctl {

bool ParseBytes(const std::string& text, uint64_t* out) {
  auto v = ParseSize(text);
  if (!v.ok()) return false;
  *out = *v;
  return true;
}

ExitCode Fail(std::string_view what, const Status& status) {
  std::cerr << "cdpctl: " << what << ": " << status.message() << "\n";
  return ExitCode::kError;
}

std::unique_ptr<journal::ControlClient> ConnectToServer(const Args& args) {
  auto client = journal::ControlClient::Connect(args.server, 5000);
  if (!client.ok()) {
    std::cerr << "cdpctl: " << client.status().message() << "\n";
    return nullptr;
  }
  return std::move(*client);
}

std::atomic<bool>* CancelOnSignals() {
  static std::atomic<bool> cancel{false};
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) cancel = true;
  }).detach();
  return &cancel;
}

}  // namespace cdp::ctl
