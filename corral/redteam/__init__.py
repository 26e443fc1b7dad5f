"""`corral redteam`: attack and benign suites run against a model or a live server, and their report.

Must not import: corral.train, corral.distill, corral.cli.
"""
