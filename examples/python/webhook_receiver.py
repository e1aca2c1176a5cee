"""A receiver for toolgate's approval deliveries, in a few lines of standard-library Python.

Every delivery is signed per Standard Webhooks 1.0, so any of its verifiers works; this one
uses the reference library (pip install standardwebhooks). Check the signature before
reading anything, answer 2xx once the event is safely yours (toolgate retries anything
else, with backoff, for up to delivery_max_age), and drop repeats by webhook-id: a delivery
can arrive more than once (an answer lost on the way back), never zero times.

    secret = os.environ["TOOLGATE_WEBHOOK_SECRET"]           # the channel's whsec_...
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), handler(secret, print))
    server.serve_forever()
"""

from __future__ import annotations

import http.server
import threading
from typing import Any, Callable

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def handler(secret: str, on_event: Callable[[str, Any], None]):
    """A request handler that verifies each POST and hands `on_event(webhook_id, event)` every
    event once. Unsigned, wrongly signed or stale requests get 401 and reach nobody."""
    verifier = Webhook(secret)
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                # The raw bytes, exactly as received; also checks webhook-timestamp is recent.
                event = verifier.verify(body, dict(self.headers.items()))
            except WebhookVerificationError:
                self.send_response(401)
                self.end_headers()
                return
            webhook_id = self.headers["webhook-id"]
            with lock:
                first = webhook_id not in seen
                seen.add(webhook_id)
            if first:
                on_event(webhook_id, event)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler
