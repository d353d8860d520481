"""Tell the relay which offloaded pods were deleted, off the admission's path.

The admission answer never waits for the relay: pods go into a bounded queue and one thread
per webhook worker sends them, gathered for up to BATCH_SECONDS (a delete storm of 100 pods
is a handful of requests), each request bounded in time. The relay may be down or slow: a
notice is only a head start on the connector's own cancel, so a failed one costs a log line
(never the token), not a delete.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from connector.backends.relay import RelayClient
from connector.errors import ConnectorError
from webhook.deletion import DeletedPod

log = logging.getLogger("hpc_offload.relay_notice")

BATCH_SECONDS = 0.2
MAX_BATCH = 500  # below the relay's MAX_DELETED_PODS
MAX_QUEUED = 10000
TIMEOUT_SECONDS = 5.0


class DeleteNotifier:
    def __init__(self, client: RelayClient) -> None:
        self.client = client
        self.queue: queue.Queue[DeletedPod] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def notify(self, pod: DeletedPod) -> None:
        """Queue the pod; started lazily, so the thread lives in the worker that uses it."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relay-notice", daemon=True)
                self._thread.start()
        try:
            self.queue.put_nowait(pod)
        except queue.Full:
            log.warning("relay notices: queue full, pod %s/%s left to its connector's own cancel",
                        pod.namespace, pod.name)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + BATCH_SECONDS
            while len(batch) < MAX_BATCH and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self.queue.get(timeout=left))
                except queue.Empty:
                    break
            self._send(batch)

    def _send(self, pods: list[DeletedPod]) -> None:
        body = {"pods": [{"namespace": pod.namespace, "uid": pod.uid} for pod in pods]}
        try:
            answer = self.client.post("/v1/deleted", body, timeout=TIMEOUT_SECONDS)
        except ConnectorError as exc:
            log.warning("relay notices: %d deleted pod(s) not told to the relay (their connectors "
                        "cancel on their own): %s", len(pods), exc.message)
            return
        log.info("relay notices: %d deleted pod(s) told to the relay, %s job(s) cancelled",
                 len(pods), answer.get("cancelled", "?"))
