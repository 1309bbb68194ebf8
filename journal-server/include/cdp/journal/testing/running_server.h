// Test support: a JournalServer running Run() on its own thread until Stop() or destruction.
// Header-only; for tests only.
#pragma once

#include <atomic>
#include <memory>
#include <thread>

#include "cdp/core/testing/temp_dir.h"
#include "cdp/journal/server.h"

namespace cdp::journal::testing {

// Options of a server kept in `dir`: its journal in DIR/journal, its socket
// ipc://DIR/journal.sock; every other option at its default.
inline ServerOptions ServerOptionsIn(const cdp::testing::TempDir& dir) {
  ServerOptions options;
  options.data_dir = dir.File("journal");
  options.listen = "ipc://" + dir.File("journal.sock");
  return options;
}

class RunningServer {
 public:
  ~RunningServer() { (void)Stop(); }

  Status Start(const ServerOptions& options) {
    auto server = JournalServer::Start(options);
    if (!server.ok()) return server.status();
    server_ = std::move(*server);
    stop_ = false;
    thread_ = std::thread([this] { run_status_ = server_->Run(&stop_); });
    return Status::Ok();
  }

  // The running server (null before Start and after Stop).
  JournalServer* server() { return server_.get(); }

  // Stops the loop, joins the thread and closes the journal. Returns what Run returned.
  [[nodiscard]] Status Stop() {
    if (!thread_.joinable()) return Status::Ok();
    stop_ = true;
    thread_.join();
    server_.reset();
    return run_status_;
  }

 private:
  std::unique_ptr<JournalServer> server_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  Status run_status_;
};

}  // namespace cdp::journal::testing
