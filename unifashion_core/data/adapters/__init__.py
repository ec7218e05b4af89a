"""Dataset adapters of ``unifashion prepare``: one module per dataset, ``common`` for what they share.

Each adapter reads one dataset in its official layout and writes the one prepared format
(``unifashion_core.data.manifest``). ``unifashion_core.data.prepare.prepare`` picks the adapter.
"""
