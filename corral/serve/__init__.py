"""`corral serve`: the OpenAI-compatible HTTP server. Owns the request schemas (`protocol.py`), the routes and
error bodies (`app.py`), the bridge from requests to the engine (`service.py`), metrics and the web chat page.

Every failure to turn a request into token ids is a 400 with OpenAI's body. Must not import: corral.train,
corral.distill, corral.redteam, corral.cli.
"""
