"""roomcast: Python client for the roomcast real-time event delivery server.

Producers publish events into rooms over REST (:class:`Producer`,
:class:`AsyncProducer`) or signed webhooks (:class:`WebhookProducer`);
subscribers follow rooms exactly once, in order, over WebSocket with a
long-poll fallback (:class:`Client`).
"""

from .client import Client, Mode, RoomSubscription, Status, TokenProvider, Transport
from .errors import (
    BadTarget,
    BadRequest,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RoomClosed,
    RoomcastError,
    Unauthorized,
    Unavailable,
)
from .models import (
    BatchResult,
    Counts,
    Event,
    EventPage,
    LatestPage,
    Member,
    Message,
    Presence,
    PresenceChange,
    PublishResult,
    Reset,
    RoomSnapshot,
    Source,
)
from ._version import __version__
from .producer import AsyncProducer, Producer
from .retry import RetryPolicy, full_jitter
from .tokens import SecretTokens, mint_token, token_claims, token_expiry
from .webhook import AsyncWebhookProducer, WebhookProducer, sign_webhook, verify_webhook


__all__ = [
    "AsyncProducer",
    "AsyncWebhookProducer",
    "BadRequest",
    "BadTarget",
    "BatchResult",
    "Client",
    "ConnectionFailed",
    "Counts",
    "Event",
    "EventPage",
    "LatestPage",
    "Message",
    "Forbidden",
    "Member",
    "Mode",
    "NotFound",
    "PayloadTooLarge",
    "Presence",
    "PresenceChange",
    "Producer",
    "PublishResult",
    "RateLimited",
    "Reset",
    "RetryPolicy",
    "RoomClosed",
    "RoomSnapshot",
    "RoomSubscription",
    "RoomcastError",
    "SecretTokens",
    "Source",
    "Status",
    "TokenProvider",
    "Transport",
    "Unauthorized",
    "Unavailable",
    "WebhookProducer",
    "full_jitter",
    "mint_token",
    "sign_webhook",
    "token_claims",
    "token_expiry",
    "verify_webhook",
]
