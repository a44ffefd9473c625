"""The packaged Gin configs (a package so that configs can `include` each other by package path)."""
