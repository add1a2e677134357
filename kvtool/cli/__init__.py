"""The `kvtool` command line: one module per command, imported only when used."""
