"""`dispatchq notifier`: completion events POSTed to their notify_url (`webhooks`)."""
