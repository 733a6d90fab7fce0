"""Golden messages of the wire protocol, in both encodings (PROTOCOL.md §10).

``vectors.json`` lists every vector: its files, what it shows, and what a conforming decoder
must make of it (the frames' kinds in order, and the rejected frames' indexes and reason codes).
``python -m protocol.vectors.generate`` rewrites the files from ``generate.py``.
"""
