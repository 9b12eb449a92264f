"""The service's wire: request/response types, the error shape, model specs and video digests.

Imported by the server and by the client (``vrs-client``); depends on pydantic and numpy only,
runs on Python >= 3.9.
"""
