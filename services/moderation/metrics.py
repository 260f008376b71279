"""Prometheus counters of the moderation service (``chat_moderation_*``)."""

from __future__ import annotations

from prometheus_client import Counter

ACTIONS = Counter("chat_moderation_actions_total", "Moderation actions committed", ["action"])
REFUSED = Counter("chat_moderation_refused_total", "Moderation requests refused, by error code",
                  ["action", "code"])
EMITS = Counter("chat_moderation_emits_total", "Events handed to the Socket.IO adapter", ["event"])
EMIT_FAILED = Counter("chat_moderation_emit_failed_total", "Events that could not be handed to the adapter",
                      ["event"])
CONTROL_SENT = Counter("chat_moderation_control_sent_total", "Gateway control broadcasts sent", ["op"])
CONTROL_ACKS = Counter("chat_moderation_control_acks_total", "Gateway nodes that confirmed a control broadcast")
CONTROL_NODE_FAILED = Counter("chat_moderation_control_node_failed_total",
                              "Gateway nodes that answered a control broadcast with a failure")
CONTROL_UNACKED = Counter("chat_moderation_control_unacked_total",
                          "Control broadcasts that no gateway node confirmed in time")
CONTROL_FAILED = Counter("chat_moderation_control_failed_total",
                         "Control broadcasts that could not be published (bus away)")
