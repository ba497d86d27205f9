"""The faces: the command line (arguments, cli, paths), the report, the summaries (terminal, JSON,
JUnit), bench, the pytest plugin and assert_within_bounds (api)."""
