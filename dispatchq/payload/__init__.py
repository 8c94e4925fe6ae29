"""Payload references: `blob:`, `file://`, `data:` and `http(s)://` resolved to at most
16 KiB (`resolve`), the strict URL parser and fetcher for the last (`http`)."""
