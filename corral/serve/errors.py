"""The errors a request can meet on its way to token ids and back, each with its HTTP status in `corral.serve.app`,
and `to_ids`: any failure to turn a client's text into token ids is a 400 naming the field."""

from __future__ import annotations

from collections.abc import Callable

from corral.errors import CorralError, InvalidArgumentError


class ModelNotServedError(CorralError):
    """The request names a model this server does not serve (HTTP 404 model_not_found)."""


class ParamError(InvalidArgumentError):
    """A request value corral cannot honour; `param` names the field (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class ModerationUnavailableError(CorralError):
    """POST /v1/moderations on a server without a guard model (HTTP 404)."""


class ContentFilterError(ParamError):
    """A shield blocked the request or its answer and the server answers blocks with errors (HTTP 400
    content_filter; `--shield-action error`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param, "content_filter")


class GenerationError(RuntimeError):
    """The engine failed while generating (HTTP 500: ours, not the client's)."""


def to_ids(encode: Callable[[], list[int]], param: str) -> list[int]:
    """`encode()` (a request's text to token ids), any failure a 400 naming `param`: a template that raises, text
    the tokenizer refuses. Never a 500 or a dropped connection for what a client sent."""
    try:
        return encode()
    except ParamError:
        raise
    except InvalidArgumentError as e:
        raise ParamError(str(e), param) from None
    except Exception as e:  # noqa: BLE001 - the client's input, whatever the tokenizer or template made of it
        raise ParamError(f"{param} could not be turned into tokens ({type(e).__name__}: "
                         f"{str(e).encode('utf-8', 'replace').decode()}); check its text and roles", param) from None
