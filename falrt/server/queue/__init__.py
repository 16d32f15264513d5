"""The request plane: the scheduler, the dispatcher, the recorder, retries, idempotency and
webhooks. It never imports generated code: the edges convert."""
