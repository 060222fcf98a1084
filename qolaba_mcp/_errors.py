"""The errors qolaba_mcp raises, split by what a caller does about them.

    QolabaError
    ├── MissingApiKeyError        no usable key configured: set QOLABA_API_KEY (printable ASCII)
    ├── InvalidTaskIdError        a task id that would change the request path: refused before any request
    ├── APIStatusError            the API answered with an error status (carries status_code, message)
    │   ├── BadRequestError       400/422: the request is invalid; the API's message says why
    │   ├── AuthenticationError   401/403: the key is missing, wrong or not allowed
    │   ├── TaskNotFoundError     404: no such task
    │   ├── RateLimitError        429: slow down; carries retry_after seconds when the API gives them
    │   └── ServerError           5xx: the API failed
    ├── ResponseFormatError       the API answered 2xx with a body we cannot read
    └── NetworkError              no usable answer (carries request_sent: could the API have seen it?)
        └── APITimeoutError       no answer in time

The HTTP client translates httpx2 failures into these once, at its boundary; nothing here ever holds the key:
text from the API reaches a message only with the key redacted and cut to a few hundred characters.
"""

from __future__ import annotations


class QolabaError(Exception):
    """Base of every error raised by qolaba_mcp."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.task_id: str | None = None  # set where the failure concerns a task that exists


class MissingApiKeyError(QolabaError):
    """No API key is configured, or one that no HTTP header can carry (the message names where it came from)."""


class InvalidTaskIdError(QolabaError):
    """A task id that is not safe in ``/api/v1/tasks/{task_id}`` (only dots, a slash, a query...): never sent."""


class APIStatusError(QolabaError):
    """The API answered with an error status."""

    def __init__(self, message: str, *, status_code: int, body: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class BadRequestError(APIStatusError):
    """400/422: invalid parameters or an unsupported model/field combination."""


class AuthenticationError(APIStatusError):
    """401/403: the API key was refused."""


class TaskNotFoundError(APIStatusError):
    """404: the task id is unknown to the API."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` is in seconds when known."""

    def __init__(self, message: str, *, status_code: int = 429, body: object = None, retry_after: float | None) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the API failed."""


class ResponseFormatError(QolabaError):
    """A success status with a body that is not the JSON we expect."""


class NetworkError(QolabaError):
    """The request got no usable answer; ``request_sent`` says whether the API may have received it."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class APITimeoutError(NetworkError):
    """The API did not answer in time."""
