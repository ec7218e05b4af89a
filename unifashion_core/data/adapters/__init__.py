"""Dataset adapters of ``unifashion prepare``: one module per dataset, ``common`` for what they share.

``catalogue_triplets`` derives composed-retrieval triplets from catalogue attributes (used by
``fashion_product``).

Each adapter reads one dataset in its official layout and writes the one prepared format
(``unifashion_core.data.manifest``). ``unifashion_core.data.prepare.prepare`` picks the adapter.
"""
