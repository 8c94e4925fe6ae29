"""The domain: a request (`request`), its dispatch and evaluation followed to an outcome
(`service`, `monitor`, `evalfeed`), the transcript of what happened (`transcript`) and how
`nomad job dispatch` prints it (`render`), the retry policy and backpressure. No Celery,
no CLI: usable and tested on its own."""
