"""The `dispatchq` command: `main` builds it, one module per command."""
