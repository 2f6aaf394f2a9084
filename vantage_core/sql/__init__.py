"""The ground floor for SQL: what data, evaluation and inference all use, and nothing above it.

- :mod:`~vantage_core.sql.schema`: the schema types (tables, columns, keys) and Spider's coarse types.
- :mod:`~vantage_core.sql.result`: :class:`ExecutionResult`, the one bounded row reader
  (:func:`fetch_bounded`) and the one result digest (:class:`ResultHasher`).
- :mod:`~vantage_core.sql.database`: the :class:`Database` contract a connector implements, and
  how a path or URL finds its connector (:func:`open_database`).
- :mod:`~vantage_core.sql.sqlite`: the SQLite connector, over :mod:`~vantage_core.sql.sandbox`
  (the worker processes that run model SQL read-only and bounded); DuckDB's and PostgreSQL's
  connectors are plugins (``plugins/vantage_plugins/databases/``).
- :mod:`~vantage_core.sql.sqlite_file`: a SQLite file opened read-only, its signature, its schema.
- :mod:`~vantage_core.sql.values`: the one reader of distinct cell values.
- :mod:`~vantage_core.sql.policy`: the allow lists SQL passes before it reaches another engine.
- :mod:`~vantage_core.sql.names`: table and column names quoted by each engine's rules.
- :mod:`~vantage_core.sql.format`: SQL formatted for people (:func:`formatted_sql`), the same meaning.

Modules here import only each other and the base modules (``errors``, ``plugins``, ``config``,
``textfiles``), never ``data``, ``model``, ``train``, ``evaluate``, ``inference`` or ``cli``.
"""
