"""One error type for the whole server, mapped to gRPC status codes and HTTP codes as TF Serving does."""

from __future__ import annotations

# tensorflow.error.Code / grpc StatusCode numbers.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

CODE_NAMES = {
    OK: "OK", CANCELLED: "CANCELLED", UNKNOWN: "UNKNOWN", INVALID_ARGUMENT: "INVALID_ARGUMENT",
    DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED", NOT_FOUND: "NOT_FOUND", ALREADY_EXISTS: "ALREADY_EXISTS",
    PERMISSION_DENIED: "PERMISSION_DENIED", RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    FAILED_PRECONDITION: "FAILED_PRECONDITION", ABORTED: "ABORTED", OUT_OF_RANGE: "OUT_OF_RANGE",
    UNIMPLEMENTED: "UNIMPLEMENTED", INTERNAL: "INTERNAL", UNAVAILABLE: "UNAVAILABLE",
    DATA_LOSS: "DATA_LOSS", UNAUTHENTICATED: "UNAUTHENTICATED",
}

# http_server.cc ToHTTPStatusCode.
_HTTP_STATUS = {
    OK: 200, CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404, ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400, ABORTED: 409, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501,
    INTERNAL: 500, UNAVAILABLE: 503, DATA_LOSS: 500, UNAUTHENTICATED: 401,
}

# grpc_status_util.cc truncates long messages.
_GRPC_MESSAGE_LIMIT = 1024


class ServingError(Exception):
    """A request failed with a canonical status code and TF Serving's message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, "UNKNOWN")

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def status_string(self) -> str:
        """absl::Status::ToString(), which TF Serving embeds in some nested messages."""
        return f"{self.code_name}: {self.message}"

    def grpc_message(self) -> str:
        if len(self.message) > _GRPC_MESSAGE_LIMIT:
            return self.message[:_GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
        return self.message

    def __repr__(self) -> str:
        return f"ServingError({self.code_name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(FAILED_PRECONDITION, message)


# TensorFlow's pybind11 status translation raises these builtins for a C++ status it does not
# turn into an OpError (pybind11_status.h CodeToPyExc); the SavedModel loader re-raises
# NOT_FOUND as FileNotFoundError. Mapped back, a load failure keeps the code TF Serving's C++
# loader would report.
_BUILTIN_CODES = ((FileNotFoundError, NOT_FOUND), (IndexError, OUT_OF_RANGE),
                  (NotImplementedError, UNIMPLEMENTED), (ValueError, INVALID_ARGUMENT))


def from_tf_error(exc: BaseException) -> ServingError:
    """TensorFlow OpErrors carry a canonical code; builtins raised for a status are mapped back;
    anything else is INTERNAL."""
    code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(code, int) and code in CODE_NAMES and code != OK:
        return ServingError(code, message)
    for kind, mapped in _BUILTIN_CODES:
        if isinstance(exc, kind):
            return ServingError(mapped, message)
    return ServingError(INTERNAL, f"{type(exc).__name__}: {message}")


def _errno_codes() -> dict[int, int]:
    """tsl::errors ErrnoToCode (errors not listed there are UNKNOWN)."""
    import errno as e

    table = {
        INVALID_ARGUMENT: "EINVAL ENAMETOOLONG E2BIG EDESTADDRREQ EDOM EFAULT EILSEQ ENOPROTOOPT "
                          "ENOSTR ENOTSOCK ENOTTY EPROTOTYPE ESPIPE",
        DEADLINE_EXCEEDED: "ETIMEDOUT ETIME",
        NOT_FOUND: "ENODEV ENOENT ENXIO ESRCH",
        ALREADY_EXISTS: "EEXIST EADDRNOTAVAIL EALREADY",
        PERMISSION_DENIED: "EPERM EACCES EROFS",
        FAILED_PRECONDITION: "ENOTEMPTY EISDIR ENOTDIR EADDRINUSE EBADF EBUSY ECHILD EISCONN "
                             "ENOTBLK ENOTCONN EPIPE ESHUTDOWN ETXTBSY",
        RESOURCE_EXHAUSTED: "ENOSPC EDQUOT EMFILE EMLINK ENFILE ENOBUFS ENODATA ENOMEM ENOSR EUSERS",
        OUT_OF_RANGE: "EFBIG EOVERFLOW ERANGE",
        UNIMPLEMENTED: "ENOSYS ENOTSUP EAFNOSUPPORT EPFNOSUPPORT EPROTONOSUPPORT ESOCKTNOSUPPORT EXDEV",
        UNAVAILABLE: "EAGAIN ECONNREFUSED ECONNABORTED ECONNRESET EINTR EHOSTDOWN EHOSTUNREACH "
                     "ENETDOWN ENETRESET ENETUNREACH ENOLCK ENOLINK ENONET",
        ABORTED: "EDEADLK ESTALE",
        CANCELLED: "ECANCELED",
    }
    codes = {}
    for code, names in table.items():
        for name in names.split():
            number = getattr(e, name, None)
            if number is not None:
                codes.setdefault(number, code)
    return codes


_ERRNO_CODES = _errno_codes()


def io_error(context: str, number: int | None) -> ServingError:
    """tsl::IOError(context, errno): "<context>; <strerror>" with the errno's canonical code."""
    import os

    if number is None:
        return ServingError(UNKNOWN, f"{context}; Unknown error")
    return ServingError(_ERRNO_CODES.get(number, UNKNOWN), f"{context}; {os.strerror(number)}")
