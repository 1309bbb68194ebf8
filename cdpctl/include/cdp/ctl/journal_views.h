// How cdpctl shows the journal-server's replies (cdp/journal/control_client.h): the human tables
// and the --json documents of `cdpctl status`, `points` and `retention`.
#pragma once

#include <string>
#include <vector>

#include "cdp/core/wire.h"

namespace cdp::ctl {

// "flush", "freeze", "operator", "cutover", "sync" ("unknown" for anything else).
std::string OriginName(wire::v1::PointOrigin origin);

// A point's label followed by the labels `cdpctl checkpoint` added to it, ", "-separated.
std::string PointLabels(const wire::v1::ConsistencyPoint& point);

// A group point member's "  [group NAME point ID: VOLUME@LSN VOLUME@LSN]"; "" for a point of
// the volume alone.
std::string GroupText(const wire::v1::ConsistencyPoint& point);

// `cdpctl points --json`: [{"lsn", "time" (RFC 3339 UTC with nanoseconds), "origin" (flush,
// freeze, operator, cutover, sync), "label", "operator_labels": [...]}], oldest first; a member
// of a group point also has "group", "group_point_id" and "group_members": [{"volume", "lsn"}].
std::string PointsJson(const std::vector<wire::v1::ConsistencyPoint>& points);
// The human table: LSN, time, origin, labels (PointLabels), then GroupText.
std::string PointsTable(const std::vector<wire::v1::ConsistencyPoint>& points);

// `cdpctl retention`: the settings in effect and the state of the history kept.
std::string RetentionText(const wire::v1::RetentionReply& reply);
// `cdpctl retention --json`: {"volume", "window_s", "max_bytes", "window_default",
// "max_bytes_default", "base_lsn", "durable_lsn", "journal_bytes", "oldest_point_lsn",
// "oldest_point_time", "early_folds", "early_fold_lsn", "history_lost_before"} (times RFC 3339,
// "" when none).
std::string RetentionJson(const wire::v1::RetentionReply& reply);

// True when the journal's filesystem has less free space than the server's reserve: the server
// journals nothing until space returns.
bool JournalFull(const wire::v1::StatusReply& reply);

// The status --json document: {"volumes": [{"name", "size_bytes", ...}], "server_id"}.
std::string StatusJson(const wire::v1::StatusReply& reply);
// The human table.
std::string StatusTable(const wire::v1::StatusReply& reply);

}  // namespace cdp::ctl
