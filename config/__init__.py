"""Settings (env vars, config file), the Celery configuration object and logging set-up."""
