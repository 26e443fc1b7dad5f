"""`corral redteam`: attack and benign suites run against a model or a live server, and their report. A model of
this process is served by `corral.serve.app` and asked over HTTP like any server: redteam uses the server's public
API, never its internals.

Must not import: corral.serve.service (or anything of serve but its app and metrics), corral.train, corral.distill,
corral.cli.
"""
