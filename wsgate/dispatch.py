"""decode -> look up the handler -> await it -> answer errors. One call per client message."""

from __future__ import annotations

import logging

from . import protocol
from .clients import ConnectedClient
from .metrics import Metrics
from .protocol import ClientError, ClientGone, Decoder
from .ratelimit import Verdict
from .registry import HandlerRegistry

log = logging.getLogger(__name__)


class Dispatcher:
    """Routes each decoded message to its plugin handler; nothing a client sends escapes as an exception."""

    def __init__(self, registry: HandlerRegistry, metrics: Metrics, decoder: Decoder) -> None:
        self.registry = registry
        self._metrics = metrics
        self._decoder = decoder
        self._rate_limited = ClientError(protocol.RATE_LIMITED, "the message was dropped; send less often")

    def within_rate(self, client: ConnectedClient, size: int) -> bool:
        """Account for a message of `size` characters; False (answered, or the client closed) when over its limits."""
        limiter = client.limiter
        if limiter is None:
            return True
        verdict = limiter.check(size, client.last_seen)
        if verdict is Verdict.ALLOW:
            return True
        self.reject(client, self._rate_limited)
        if verdict is Verdict.CLOSE:
            log.warning("client %s stayed over its rate limit; closing", client.id, extra={"client_id": client.id})
            client.drop(protocol.CLOSE_POLICY_VIOLATION, protocol.RATE_LIMITED)
        return False

    async def dispatch(self, client: ConnectedClient, text: str) -> None:
        """Handle one text message from `client`; every failure is answered, none escapes.

        With a byte rate limit, what the answers hold beyond the message's own size (a `history` answer, a
        replay, a plugin's large reply) is charged to the client's byte bucket too: a 40-byte request must
        not fetch a megabyte per message the limit allows.
        """
        limiter = client.limiter
        if limiter is None:
            await self._handle(client, text)
            return
        if not self.within_rate(client, len(text)):
            return
        replied = client.replied
        await self._handle(client, text)
        limiter.charge(client.replied - replied - len(text), client.last_seen)

    async def _handle(self, client: ConnectedClient, text: str) -> None:
        kind = None
        try:
            message = self._decoder.decode(text)
            kind = message.type
            self._metrics.message_received(kind)
            if log.isEnabledFor(logging.DEBUG):  # per-message logging only at debug, and free otherwise
                log.debug("client %s sent %r", client.id, kind, extra={"client_id": client.id, "room": message.room})
            handler = self.registry.get(kind)
            if handler is None:
                raise ClientError(protocol.UNKNOWN_TYPE)
            await handler(client, message)
        except ClientError as err:
            self.reject(client, err)
        except ClientGone:
            log.debug("client %s left while its %r was handled", client.id, kind, extra={"client_id": client.id})
        except Exception:
            log.exception("handler for %r failed (client %s)", kind, client.id, extra={"client_id": client.id})
            self.reject(client, ClientError(protocol.INTERNAL_ERROR))

    def reject(self, client: ConnectedClient, err: ClientError) -> None:
        """Count `err` and answer it to the client."""
        self._metrics.error(protocol.ERROR_REASONS.get(err.text, "rejected"))
        client.send_error(err)
