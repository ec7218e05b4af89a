"""The built-in demo dataset: procedurally drawn garments with known attributes.

Every item is one combination of garment type, colour, pattern, sleeve and length, drawn with
PIL on a plain white background, so captions, descriptions and composed-retrieval triplets are
exact by construction. Nothing is shipped: the images are generated from the seed, and two runs
with the same arguments write byte-identical datasets.

``attributes`` holds the attribute space, ``drawing`` draws a garment, ``texts`` writes captions,
descriptions and modification texts, ``triplets`` picks unambiguous composed-retrieval triplets;
``unifashion_core.data.adapters.demo.prepare_demo`` puts them together.
"""
