"""rrmq: a Python client for rrmq, a Raft-replicated message queue (ZeroMQ + MessagePack).

    import rrmq

    client = rrmq.Client.from_config("config.json")          # key_file="alice.key" if keyed
    client.create_topic("orders")
    client.put("orders", "hello")
    print(client.get("orders"))                                # 'hello'; None when empty
    for delivery in client.get_leased("orders", lease=30, wait=5):
        ...                                                    # process, then
        client.ack("orders", delivery.receipt)

See :class:`rrmq.Client` for the calls and :mod:`rrmq.errors` for the exceptions.
"""

from .client import (
    ATTEMPT_TIMEOUT_DEFAULT,
    HEDGE_AFTER_DEFAULT,
    TIMEOUT_DEFAULT,
    Client,
    Delivery,
    Member,
    Message,
    Node,
    Status,
    load_config,
    read_key_file,
)
from .errors import (
    BadRequest,
    ChangeInProgress,
    ConfigError,
    Forbidden,
    NoSuchTopic,
    Quota,
    RrmqError,
    SessionExpired,
    StaleReceipt,
    Timeout,
    TooLarge,
    TopicExists,
    Unavailable,
    UnexpectedReply,
)

__version__ = "0.1.0"

__all__ = [
    "ATTEMPT_TIMEOUT_DEFAULT",
    "HEDGE_AFTER_DEFAULT",
    "TIMEOUT_DEFAULT",
    "BadRequest",
    "ChangeInProgress",
    "Client",
    "ConfigError",
    "Delivery",
    "Forbidden",
    "Member",
    "Message",
    "Node",
    "NoSuchTopic",
    "Quota",
    "RrmqError",
    "SessionExpired",
    "StaleReceipt",
    "Status",
    "Timeout",
    "TooLarge",
    "TopicExists",
    "Unavailable",
    "UnexpectedReply",
    "load_config",
    "read_key_file",
]
