"""The gateway: ingest -> decode/sample -> batch -> backend -> scoring, behind a FastAPI app."""
