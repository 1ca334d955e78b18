"""Experiments over many runs: ``dpopt compare`` (searchers on one objective) and ``dpopt study``
(objectives x searchers), their statistics and their reports."""
