"""The customer directory: phone normalization, search, notes, CSV import/export, and the caller lookup.

Who is calling is known before an agent answers: at `incoming` a background task looks the caller's number
up here and leaves the result in Redis (cb:caller:{CallSid}), where the pop and the routing read it. The
database is never on the path of a webhook's answer: a slow or absent database only makes the pop later
or say `directory_unavailable`.
"""
