"""The exceptions a call can raise.

Every failure the cluster reports carries its protocol code (PROTOCOL.md §5) in ``code``, so
``except rrmq.RrmqError as error: if error.code == "QUOTA": ...`` works for any of them; the
common ones also have their own class. Failures the client meets itself (no answer before the
deadline, a bad config or key file) have ``code`` set to the nearest protocol code
(``TIMEOUT``, ``UNAVAILABLE``) or ``None``.

An empty topic is not an error: :meth:`rrmq.Client.get` returns ``None`` and the list-returning
calls return ``[]``, as ``queue.get_nowait`` callers would otherwise need a ``try`` around every
poll.
"""

from typing import Dict, Optional, Type

OUTCOME_UNKNOWN = "the outcome is unknown: it may or may not have been applied"


class RrmqError(Exception):
    """Base class of every error this package raises.

    ``code`` is the protocol's error code (``"NO_SUCH_TOPIC"``, ``"FORBIDDEN"``, ...) when the
    cluster answered with one, else ``None`` or the nearest code for a client-side failure.
    """

    code: Optional[str] = None

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may or may not have taken effect."""
        return False


class ConfigError(RrmqError):
    """The config or key file cannot be used (unreadable, not JSON, a bad key)."""


class NoSuchTopic(RrmqError):
    """``NO_SUCH_TOPIC``: the topic does not exist."""

    code = "NO_SUCH_TOPIC"


class TopicExists(RrmqError):
    """``TOPIC_EXISTS``: raised only where creating is not the point (``create_topic`` returns
    ``False`` instead)."""

    code = "TOPIC_EXISTS"


class BadRequest(RrmqError):
    """``BAD_REQUEST``: the cluster refused the request as malformed; nothing changed."""

    code = "BAD_REQUEST"


class TooLarge(RrmqError):
    """``TOO_LARGE``: a message, batch or name is over the cluster's limits; nothing changed."""

    code = "TOO_LARGE"


class Quota(RrmqError):
    """``QUOTA``: the write would take the cluster over a quota; nothing changed. Retrying
    does not help until consumers make room."""

    code = "QUOTA"


class Forbidden(RrmqError):
    """``FORBIDDEN``: outside the rights ``config.json`` gives this client's key; nothing
    changed."""

    code = "FORBIDDEN"


class StaleReceipt(RrmqError):
    """``STALE_RECEIPT``: the receipt is not the live lease's (the lease ended, the message was
    acknowledged, or the receipt was never issued). Nothing changed; the message may be, or may
    have been, handed to another consumer."""

    code = "STALE_RECEIPT"

    def __init__(self, message: str, topic: str = "", receipt: str = "") -> None:
        super().__init__(message)
        self.topic = topic
        self.receipt = receipt


class ChangeInProgress(RrmqError):
    """``CHANGE_IN_PROGRESS`` (PROTOCOL.md §12): another membership change is under way (an
    add whose new node is still catching up stays in progress until it is promoted, or
    cancelled by removing its id). Nothing changed."""

    code = "CHANGE_IN_PROGRESS"


class SessionExpired(RrmqError):
    """``SESSION_EXPIRED``: the cluster forgot this client's session, so a retried request may
    or may not have been applied. Make a new :class:`rrmq.Client`."""

    code = "SESSION_EXPIRED"

    @property
    def outcome_unknown(self) -> bool:
        return True


class _GaveUp(RrmqError):
    """A call that ended at its deadline without a decisive answer."""

    def __init__(self, message: str, code: str, outcome_unknown: bool) -> None:
        super().__init__(message, code)
        self._outcome_unknown = outcome_unknown

    @property
    def outcome_unknown(self) -> bool:
        """True for writes: the request may have been applied."""
        return self._outcome_unknown


class Timeout(_GaveUp):
    """No decisive answer before the deadline: nodes were silent, or could not be reached.
    For a write, ``outcome_unknown`` is true: it may have been applied."""

    code = "TIMEOUT"


class Unavailable(_GaveUp):
    """Nodes answered but none could serve before the deadline (no leader, no quorum, shutting
    down). For a write, ``outcome_unknown`` is true."""

    code = "UNAVAILABLE"


class UnexpectedReply(RrmqError):
    """A node answered with something this client does not understand for the call made."""


_BY_CODE: Dict[str, Type[RrmqError]] = {
    cls.code: cls  # type: ignore[misc]
    for cls in (
        NoSuchTopic,
        TopicExists,
        BadRequest,
        TooLarge,
        Quota,
        Forbidden,
        ChangeInProgress,
        SessionExpired,
    )
}


def from_code(code: str, message: str) -> RrmqError:
    """The exception for a decisive failure the cluster answered with ``code``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return RrmqError(f"{code}: {message}", code)
    return cls(message)
