// NbdServer: the NBD front end of the capture agent (cdp-agent) and of `cdpctl export`/`restore`.
// It exports one ExportTarget under one export name over a unix or TCP socket, so that a
// hypervisor (QEMU) or nbd-client can use the protected volume as a disk while every write is
// captured, or read an image of the journal.
//
// Protocol: fixed-newstyle handshake (NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO, GO; STARTTLS,
// STRUCTURED_REPLY, META_CONTEXT and unknown options are refused with an error reply), then
// simple replies only. Advertised: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES (and READ_ONLY when configured); no MULTI_CONN, no structured replies.
// Block sizes: minimum = target->block_size(), preferred = max(preferred_block_size, minimum),
// maximum = max_block_size. Requests are validated with nbd::ValidateRequest (nbd_protocol.h)
// before they reach the target, so a rejected request journals nothing.
//
// Threads: one accept thread, plus one thread per connection that handles that connection's
// requests in order. Each call into the ExportTarget comes from a connection thread.
//
//   Start() --> [accept thread] --accept--> peer under max_connections_per_peer? --no--> close
//                                                  | yes                                (refused)
//                                                  v
//                                           under max_connections? --no--> close (refused)
//                                                  | yes
//                                                  v
//               [connection thread] handshake (deadline) -> transmission (no deadline)
//   Stop()  --> wake accept thread, shutdown() every connection socket, join all threads
//
// Limits: what a peer can make the server hold, and what happens at each bound.
//   - Connections: at most Options::max_connections (default 64) are served at once. One more
//     is accepted and closed at once, before the greeting and without a thread; it is counted
//     in connections_refused. The log says so once per refusal episode (the first refused
//     peer and the limit), then at most once a minute while it lasts, and once more when a
//     connection is admitted again. 64 is far above any real client: QEMU opens one
//     connection per drive, qemu-img and qemu-io one, and nbdcopy opens up to 4 only when the
//     server advertises MULTI_CONN, which this one does not.
//   - Connections per peer: at most Options::max_connections_per_peer (default 16) from one
//     peer, so that a peer that opens connections and leaves them idle cannot take every place
//     and lock out the VM whose disk the export is. A peer is a process on a unix socket (the
//     pid SO_PEERCRED gives; the uid when the pid is not visible in our pid namespace, so such
//     processes of one user count together) and a host on TCP (the IP address, whatever the
//     port). One more is closed like one over max_connections and counted in
//     connections_refused_per_peer instead (the per-peer limit is checked first, and each
//     refusal is counted once). The log has one line when a peer is first refused (the peer,
//     its open connections and the limit), at most one a minute while that goes on, and one
//     when the peer is found under its limit again: at most max_connections /
//     max_connections_per_peer peers are in such an episode at once. A place is free again once
//     the server has seen the connection close (connections_active falls). 16 leaves a client
//     that opens one connection room to reconnect many times while its dead connections wait
//     for keepalive, and takes at least 4 peers to fill max_connections. It bounds a peer, not
//     an attacker: a local user allowed on the socket (unix_socket_mode) can fork, and a host
//     with many addresses (an IPv6 /64) is many peers; against those, max_connections, the
//     socket's permissions and the listen address are the bounds.
//   - Handshake: a client must select the export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) within
//     Options::handshake_timeout (default 10 s) of being accepted, or it is disconnected,
//     logged and counted in handshake_timeouts. The deadline is for the whole handshake, so it
//     also ends a client that sends nothing, stops in the middle of a message, keeps sending
//     options, or does not read the server's replies. Real clients finish in milliseconds.
//   - Transmission: no idle timeout. A VM whose disk is the export may issue no I/O for hours
//     and must not lose its disk for it. Dead peers are found instead by TCP keepalive (TCP
//     only; Options::tcp_keepalive_idle, default 300 s of silence, then a probe every 30 s;
//     10 unanswered probes close the connection, about 10 minutes in all, close to the
//     ~15 minutes after which the kernel gives up on a peer with unacknowledged data). A unix
//     socket peer that dies is seen by the kernel at once.
//   - Memory per connection: one request at a time. The server reads the next request only
//     after replying to the previous one, so requests a client pipelines wait in the kernel's
//     socket buffers, and a client that does not read its replies stops the server from
//     reading its requests (its thread waits in send; Stop() still ends it). Option data is at
//     most 64 KiB; a READ or WRITE buffer at most max_block_size, checked before allocating (a
//     longer request gets NBD_EINVAL and a refused WRITE's payload is skipped in 64 KiB
//     chunks). A read buffer over 1 MiB is freed after its reply. So a connection holds at most
//     about max_block_size + 1 MiB, and the server max_connections times that (with the
//     defaults 64 x 33 MiB, reached only if every connection moves a 32 MiB request at once).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "cdp/core/status.h"
#include "cdp/nbd/export_target.h"
#include "cdp/nbd/nbd_protocol.h"

namespace cdp::nbd {

// A parsed listen address.
struct NbdListenAddress {
  enum class Kind { kUnix, kTcp };
  Kind kind = Kind::kUnix;
  std::string path;   // kUnix: socket file path
  std::string host;   // kTcp: host name or literal address; empty listens on every address
  uint16_t port = 0;  // kTcp: 0 asks the kernel for a free port (see bound_address())
};

// Parses "unix:PATH" or "tcp:HOST:PORT" ("tcp:[::1]:10809" for IPv6 literals, "tcp::10809"
// for every address). InvalidArgument naming `text` and the accepted forms on bad syntax.
Result<NbdListenAddress> ParseNbdListenAddress(std::string_view text);

// Counters since Start(). Monotonic except connections_active. Request counters are updated
// before the reply is sent, so a client that has a reply sees it counted.
struct NbdServerStats {
  uint64_t connections_accepted = 0;  // admitted: given a thread (refused ones not included)
  uint64_t connections_active = 0;    // admitted and not yet closed
  uint64_t connections_refused = 0;   // closed unserved: max_connections were already open
  // Closed unserved: its peer already had max_connections_per_peer open. Not also counted in
  // connections_refused; all refusals are the sum of the two.
  uint64_t connections_refused_per_peer = 0;
  uint64_t handshake_timeouts = 0;  // dropped: no export selected within handshake_timeout
  uint64_t requests = 0;            // transmission requests received (including rejected ones)
  uint64_t errors = 0;              // requests answered with a non-zero NBD error
  uint64_t bytes_read = 0;          // payload bytes returned by successful NBD_CMD_READs
  uint64_t bytes_written = 0;       // payload bytes accepted by NBD_CMD_WRITE
};

class NbdServer {
 public:
  struct Options {
    // "unix:/run/cdp/db01-sda.sock" or "tcp:127.0.0.1:10809".
    std::string listen_address;
    // The only export; usually the volume name. Clients asking for "" get it too (the NBD
    // default export).
    std::string export_name;
    // Not owned; must outlive the server (until Stop() returns).
    ExportTarget* target = nullptr;
    // Largest READ / WRITE / WRITE_ZEROES accepted; a multiple of target->block_size().
    uint32_t max_block_size = 32u << 20;
    // Advertised preferred block size (a power of two; raised to the minimum if smaller).
    uint32_t preferred_block_size = 4096;
    // Advertise NBD_FLAG_READ_ONLY and refuse WRITE / TRIM / WRITE_ZEROES with EPERM.
    bool read_only = false;
    // Permissions of a unix socket file (the hypervisor's group may need access).
    mode_t unix_socket_mode = 0660;
    // Most connections served at once (at least 1). A connection beyond it is closed at once,
    // unserved, and counted in connections_refused; see "Limits" above.
    uint32_t max_connections = 64;
    // Most connections served at once from one peer: a process on a unix socket, an IP address
    // on TCP (1..max_connections). A connection beyond it is closed at once, unserved, and
    // counted in connections_refused_per_peer; see "Limits" above.
    uint32_t max_connections_per_peer = 16;
    // Time from accept() to the client selecting the export (NBD_OPT_GO / EXPORT_NAME), after
    // which a client still in the handshake is disconnected (positive). Not applied in
    // transmission.
    std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10);
    // TCP only: seconds of silence on a connection before the kernel starts keepalive probes
    // (then every 30 s; 10 unanswered probes close the connection). 0 turns keepalive off;
    // at most 32767 (the kernel's TCP_KEEPIDLE limit).
    std::chrono::seconds tcp_keepalive_idle = std::chrono::seconds(300);
  };

  // Validates `options`, binds and listens, and starts the accept thread.
  // Returns InvalidArgument for bad options (address syntax, missing target or export name,
  // block sizes the NBD spec forbids, max_connections 0, max_connections_per_peer 0 or over
  // max_connections, handshake_timeout not positive, tcp_keepalive_idle out of range),
  // IOError/AlreadyExists naming the address when it cannot listen (port busy, unix socket
  // path unwritable, a live server already on that socket).
  // A stale unix socket file (nobody accepting) is removed and replaced; any other file at that
  // path is left alone and reported.
  static Result<std::unique_ptr<NbdServer>> Start(Options options);

  // Calls Stop().
  ~NbdServer();

  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Stops accepting, closes the listening socket (removing its unix socket file), disconnects
  // every client and joins all threads. A request already inside the target completes first;
  // no call into the target is made after Stop() returns. Idempotent and thread-safe.
  // REQUIRES: not called from inside an ExportTarget call made by this server (it joins the
  // connection threads, one of which would be the caller).
  void Stop();

  // The address actually listened on, in listen_address syntax. For "tcp:HOST:0" this names
  // the port the kernel chose, e.g. "tcp:127.0.0.1:40123". Thread-safe.
  std::string bound_address() const { return bound_address_; }

  // A snapshot of the counters. Thread-safe.
  NbdServerStats stats() const;

 private:
  // One client connection, owned by the server; its thread runs the NBD session.
  struct Connection {
    int fd = -1;       // guarded by NbdServer::mu_; -1 once the connection thread closed it
    std::string peer;  // for logs: "unix:pid=812,uid=107", "tcp:192.0.2.7:51234"
    // What max_connections_per_peer counts by: "unix:pid=812", "tcp:192.0.2.7".
    std::string peer_key;
    std::chrono::steady_clock::time_point accepted_at;  // the handshake deadline counts from it
    std::thread thread;
    std::atomic<bool> finished{false};
  };

  // Connections refused since the number open reached a limit (max_connections, or one
  // peer's max_connections_per_peer), for the log. Touched only by the accept thread.
  struct RefusalEpisode {
    bool active = false;
    uint64_t refused = 0;   // in this episode
    uint64_t unlogged = 0;  // refused since the last log line
    std::string last_peer;
    std::chrono::steady_clock::time_point started;
    std::chrono::steady_clock::time_point next_summary;  // earliest time for the next line
  };

  // Atomic counters behind NbdServerStats, bumped by connection threads.
  struct Counters {
    std::atomic<uint64_t> connections_accepted{0};
    std::atomic<uint64_t> connections_active{0};
    std::atomic<uint64_t> connections_refused{0};
    std::atomic<uint64_t> connections_refused_per_peer{0};
    std::atomic<uint64_t> handshake_timeouts{0};
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> bytes_read{0};
    std::atomic<uint64_t> bytes_written{0};
  };

  friend class NbdSession;

  explicit NbdServer(Options options);

  void AcceptLoop();
  void ServeConnection(Connection* conn);
  // Joins connection threads that have finished, takes them off their peers' counts, and
  // returns how many connections remain (those still being served). REQUIRES: called from the
  // accept thread.
  size_t ReapFinishedConnections();
  // How many connections remain from the peer `peer_key` (as of the last reap).
  uint32_t OpenFromPeer(const std::string& peer_key) const;
  // Closes `fd` unserved because `open` connections are open, counts it, and logs it as the
  // refusal episode allows. REQUIRES: called from the accept thread.
  void RefuseConnection(int fd, const std::string& peer, size_t open);
  // Closes `fd` unserved because its peer `peer_key` has `peer_open` connections open, counts
  // it, and logs it as that peer's refusal episode allows. REQUIRES: called from the accept
  // thread.
  void RefusePeerConnection(int fd, const std::string& peer, const std::string& peer_key,
                            uint32_t peer_open);
  // Ends (and logs the end of) the refusal episode of every peer now under
  // max_connections_per_peer. REQUIRES: called from the accept thread, after reaping.
  void EndPeerRefusalEpisodes();
  // When the next refusal summary is due (of the max_connections episode or of any peer's);
  // nullopt when none is waiting. REQUIRES: called from the accept thread.
  std::optional<std::chrono::steady_clock::time_point> NextRefusalSummary() const;
  // Counts `peer` in the refusal episode and logs the episode's start, or a summary when one
  // is due. REQUIRES: called from the accept thread.
  void LogRefusal(const std::string& peer, size_t open);
  // Logs the refusals not yet logged (at max_connections and per peer), where it is time.
  // REQUIRES: called from the accept thread.
  void MaybeLogRefusals(std::chrono::steady_clock::time_point now);
  // Ends the refusal episode when `peer` is admitted. REQUIRES: called from the accept thread.
  void EndRefusalEpisode(const std::string& peer);
  // Sets TCP_NODELAY and keepalive on an accepted TCP socket.
  void ConfigureTcpSocket(int fd, const std::string& peer) const;

  const Options options_;
  nbd::ExportLimits limits_;           // size, block sizes, read-only: fixed at Start()
  uint32_t preferred_block_size_ = 0;  // as advertised
  uint16_t transmission_flags_ = 0;    // as advertised
  int listen_fd_ = -1;
  int wake_fd_ = -1;       // eventfd that wakes the accept thread on Stop()
  std::string unix_path_;  // socket file to remove on Stop(); empty for TCP
  ino_t unix_inode_ = 0;   // the socket file we created, so Stop() removes only ours
  bool is_tcp_ = false;
  std::string bound_address_;  // set before the accept thread starts; const afterwards
  std::thread accept_thread_;
  RefusalEpisode refusals_;  // at max_connections; accept thread only
  // Per peer key, for peers refused at max_connections_per_peer and not yet seen under it
  // again: at most max_connections / max_connections_per_peer entries. Accept thread only.
  std::map<std::string, RefusalEpisode> peer_refusals_;
  Counters counters_;

  std::mutex stop_mu_;    // serializes Stop()
  bool stopped_ = false;  // guarded by stop_mu_

  mutable std::mutex mu_;
  bool stopping_ = false;                               // guarded by mu_
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_
  // Connections in connections_ per Connection::peer_key; a key is erased when its count
  // reaches 0, so there are at most max_connections entries.
  std::map<std::string, uint32_t> connections_per_peer_;  // guarded by mu_
};

}  // namespace cdp::nbd
