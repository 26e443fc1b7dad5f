"""`corral serve`: the OpenAI-compatible HTTP server. Owns the request schemas (`protocol.py`), the routes and
error bodies (`app.py`), the endpoints without HTTP: request checking and shields (`service.py`), the errors a
request can meet (`errors.py`), the engine-thread bridge (`bridge.py`), response pieces and SSE (`responses.py`),
streams with the output shield's hold-back (`stream.py`), metrics and the web chat page. Structured output and
tool calls are constrained by `corral.grammar` and written by `corral.tools`, which eval and train share.

Every failure to turn a request into token ids is a 400 with OpenAI's body. Must not import: corral.train,
corral.distill, corral.redteam, corral.cli.
"""
