"""The persistent journal: intent recorded in precommit, reconciled by a worker.

``store`` is its database API (record, claim, settle, release, prune, list).
"""
