"""Approval deliveries checked by an independent verifier: the Standard Webhooks reference
library, in webhook_receiver.py, receiving from the real server."""

from __future__ import annotations

import http.server
import queue
import threading

import pytest

from toolgate.v1 import toolgate_pb2 as pb
from webhook_receiver import handler

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver():
    events: queue.Queue = queue.Queue()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), handler(SECRET, lambda wid, event: events.put((wid, event)))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/toolgate", events
    server.shutdown()


def test_an_approval_request_and_its_outcome_arrive_verified(env, receiver):
    url, events = receiver
    channel = env.stub.SetNotificationChannel(
        pb.SetNotificationChannelRequest(
            channel=pb.NotificationChannel(
                id="helpdesk", kind=pb.CHANNEL_KIND_WEBHOOK, url=url, secret=SECRET, enabled=True
            )
        ),
        metadata=env.as_admin(),
        timeout=10,
    ).channel
    assert channel.secret == "", "secrets are write-only"
    asked = env.stub.Decide(
        pb.DecideRequest(
            integration_id="entra",
            tool_name="add_user_to_group",
            arguments_json='{"user":"bob","group":"Helpdesk"}',
            requester_id="alice",
            request_id="req-webhook",
        ),
        metadata=env.as_agent(),
        timeout=10,
    )
    assert asked.verdict == pb.VERDICT_PENDING_APPROVAL

    _, requested = events.get(timeout=30)
    assert requested["type"] == "approval.requested"
    assert requested["data"]["sequence"] == 1
    assert requested["data"]["audience"] == {"role": "technician"}
    approval = requested["data"]["approval"]
    assert approval["id"] == asked.approval.id
    assert approval["argumentsJson"] == '{"group":"Helpdesk","user":"bob"}'
    assert approval["state"] == "APPROVAL_STATE_PENDING"

    env.approve(asked.approval.id)
    _, approved = events.get(timeout=30)
    assert approved["type"] == "approval.approved"
    assert approved["data"]["sequence"] == 2
    assert approved["data"]["approval"]["steps"][0]["approverId"] == "tom"

    delivered = env.stub.ListDeliveries(
        pb.ListDeliveriesRequest(approval_id=asked.approval.id),
        metadata=env.as_admin(),
        timeout=10,
    ).deliveries
    assert sorted(d.event_type for d in delivered) == ["approval.approved", "approval.requested"]
