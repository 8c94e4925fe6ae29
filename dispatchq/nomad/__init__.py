"""The Nomad HTTP client: its configuration from `NOMAD_*` (`config`), the connection pool
and TLS (`transport`) and the calls dispatchq makes (`client`)."""
