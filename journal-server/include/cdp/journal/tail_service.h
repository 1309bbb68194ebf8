// TailService: the replicators' side of the journal-server (docs/wire-protocol.md, TailRequest
// and TailBatch). A replicator pulls: each TailRequest reports the LSN its replica has applied
// (recorded in the journal, so retention and status know it) and asks for the records from
// from_lsn on, at most max_bytes of them. The service answers with a TailBatch of durable records
// in LSN order (with their payloads as frames, and the consistency points among them), so a slow
// replicator is never flooded: it gets the next batch when it asks.
//
// Long poll: a request with nothing durable to send yet is parked (one per peer; a newer request
// replaces it) and answered by ServeParked once the group commit made records durable, or, with
// an empty batch carrying the durable LSN, once its wait_ms has passed. A request with wait_ms 0
// is answered at once; one with max_bytes 0 is a progress report only and gets no answer.
//
// Errors go to the requester as a worded Error: permanent for a request that can never be served
// as it is (from LSN 0, or from an LSN that retention folded into the base image: the replica
// must be reseeded), not permanent for a journal that could not be read (retried).
//
// The server checks the session (a replicator that said Hello for the volume) before handing a
// request over. Threading: every method runs on the server's loop thread; the class is not
// thread-safe. Reads of the journal are bounded (max_tail_bytes, 4096 records per batch) so a
// tail never holds up the next group commit for long.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "cdp/core/wire.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/outbox.h"

namespace cdp::journal {

class TailService {
 public:
  using Clock = std::chrono::steady_clock;

  // At most this many records in one TailBatch, whatever the byte budget.
  static constexpr size_t kMaxTailRecords = 4096;

  // REQUIRES: store and outbox outlive the service. `max_tail_bytes` caps one TailBatch
  // (ServerOptions::max_tail_bytes), below what a request asks if it asks for more.
  TailService(JournalStore* store, Outbox* outbox, uint64_t max_tail_bytes)
      : store_(store), outbox_(outbox), max_tail_bytes_(max_tail_bytes) {}

  // A TailRequest from `peer`, a replicator session of request.volume(). Records its applied LSN
  // (JournalStore::SetApplied; a failure is logged, the tail still served), then answers it, parks
  // it, or answers an Error (see the file comment).
  void HandleRequest(const std::string& peer, const wire::v1::TailRequest& request);

  // Answers the parked requests past their deadline (an empty batch when nothing is durable
  // past from_lsn) and, unless `expire_only`, those that have records to send now. The loop
  // calls it after each group commit (expire_only false) and when idle (true).
  void ServeParked(bool expire_only);

  // When a replicator of `volume` last reported its applied LSN (any TailRequest for it);
  // nullopt when none has since the server started.
  std::optional<Clock::time_point> LastAppliedReport(const std::string& volume) const;

  // Requests parked now (tests and status).
  size_t parked() const { return parked_.size(); }

 private:
  struct ParkedTail {
    wire::v1::TailRequest request;
    Clock::time_point deadline;
  };

  // Sends the records >= request.from_lsn() to `peer`; false (nothing sent) when none is durable
  // yet and `send_empty` is false. Errors are sent to the peer and count as answered.
  bool ServeTail(const std::string& peer, const wire::v1::TailRequest& request, bool send_empty);

  JournalStore* const store_;
  Outbox* const outbox_;
  const uint64_t max_tail_bytes_;
  std::map<std::string, ParkedTail> parked_;                 // by routing id
  std::map<std::string, Clock::time_point> applied_report_;  // by volume name
};

}  // namespace cdp::journal
