"""The ``.lcz`` file format, Lightning-free: container, codecs, report, and the save/load API.

* ``container`` — prefix, tensor table, checksum, versions; every check made before decoding;
* ``raw``, ``layer``, ``grouped`` — tensor codecs (raw bytes; sparse relative indices + codebook; grouped
  codebooks, version 2), built on ``streams`` (fixed-width or Huffman index streams), ``huffman``,
  ``huffman_decode`` and ``bitstream``;
* ``report`` — what a save wrote, to the byte; ``selection`` — which tensors are compressed;
* ``model_check`` — the file's table against a model; ``api`` — ``save_compressed``, ``load_compressed``,
  ``read_compressed``; ``errors`` — the one exception hierarchy readers raise.
"""
