from __future__ import annotations

import io
import json
import logging

from libs.observability.logging import JsonFormatter, _ContextFilter, session_id_var, user_id_var


def test_json_logs_carry_service_node_user_session_and_extras():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter("gateway", "gw-1"))
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    user_id_var.set("alice")
    session_id_var.set("s-1")
    logger.info("connected", extra={"sid": "abc"})
    line = json.loads(stream.getvalue())
    assert {k: line[k] for k in ("level", "msg", "service", "node", "user_id", "session_id", "sid")} == {
        "level": "info", "msg": "connected", "service": "gateway", "node": "gw-1", "user_id": "alice",
        "session_id": "s-1", "sid": "abc"}
    assert line["ts"].endswith("Z")
